//! Kafka topic names and Felix stream names (`docs/kafka.md`, "Names").
//!
//! A door serves one namespace of the connection's tenant: topic `orders`
//! is stream `<tenant>/<namespace>/orders`. Kafka allows 249 of
//! `a-z A-Z 0-9 . _ -`; Felix's rule (`felix_model::names`) allows the same
//! characters but 64 of them and no leading dot, so a longer name or one
//! starting with a dot is refused as INVALID_TOPIC_EXCEPTION rather than
//! changed.

use felix_model::names::{stream_name_problem, StreamName};

/// The stream topic `topic` names, or why it names none.
pub fn stream_of(tenant: &str, namespace: &str, topic: &str) -> Result<String, &'static str> {
    if let Some(why) = stream_name_problem(topic) {
        return Err(why);
    }
    Ok(format!("{tenant}/{namespace}/{topic}"))
}

/// The topic a stream is, if it is in `tenant`'s `namespace`.
pub fn topic_of<'a>(tenant: &str, namespace: &str, stream: &'a str) -> Option<&'a str> {
    let n = StreamName::parse(stream).ok()?;
    (n.tenant == tenant && n.namespace == namespace).then(|| {
        let at = stream.len() - n.name.len();
        &stream[at..]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_a_stream_of_the_doors_namespace_and_back() {
        let s = stream_of("acme", "default", "orders.v2").unwrap();
        assert_eq!(s, "acme/default/orders.v2");
        assert_eq!(topic_of("acme", "default", &s), Some("orders.v2"));
        assert_eq!(topic_of("acme", "other", &s), None);
        assert_eq!(topic_of("evil", "default", &s), None);
    }

    #[test]
    fn names_felix_cannot_hold_are_refused_not_changed() {
        assert!(stream_of("acme", "default", &"a".repeat(65)).is_err());
        assert!(stream_of("acme", "default", ".hidden").is_err());
        assert!(stream_of("acme", "default", "a/b").is_err());
        assert!(stream_of("acme", "default", "").is_err());
    }
}
