//! Topic administration for Kafka admin clients: CreateTopics,
//! DeleteTopics, DescribeConfigs, AlterConfigs and IncrementalAlterConfigs
//! as the broker's stream requests (`docs/kafka.md`, "Topic
//! administration"). The topic configurations Felix has a meaning for are
//! mapped both ways by [`settings_of`], [`altered`] and [`configs_of`]
//! (sans-IO); any other is refused, not ignored.

use felix_client::server::Handler;
use felix_client::wire::{ErrorReply, Message, StreamConfig};
use felix_model::{Durability, StreamKind};
use kafka_protocol::messages::{
    alter_configs_response, create_topics_response, delete_topics_response, describe_configs_response,
    incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::exec::{code_of, Cx, Door};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;

/// Partitions of a topic created without a count (Kafka's
/// `num.partitions` default).
pub const PARTITIONS_DEFAULT: u32 = 1;
/// Most partitions one CreateTopics may ask of a topic (the broker holds
/// its own limit too).
pub const PARTITIONS_MAX: i32 = 10_000;
/// Most replicas a topic may ask for.
pub const REPLICATION_FACTOR_MAX: i16 = 7;

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// The topic configurations with a Felix meaning.
pub const CONFIGS: &[&str] = &["retention.ms", "retention.bytes", "cleanup.policy"];

/// A topic's retention as Felix keeps it: (retention_ms, retention_bytes),
/// `None` keeping forever on that axis.
pub type Retention = (Option<u64>, Option<u64>);

/// What CreateTopics' configs set (AlterConfigs' too: it replaces every
/// configuration, so one not named is back to its default), or the name
/// and reason of the first that Felix cannot honour.
pub fn settings_of<'a>(
    configs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Retention, String> {
    let mut out = (None, None);
    for (name, value) in configs {
        set(&mut out, name, value)?;
    }
    Ok(out)
}

/// IncrementalAlterConfigs operations.
pub const OP_SET: i8 = 0;
pub const OP_DELETE: i8 = 1;

/// `current` after IncrementalAlterConfigs' (name, operation, value)
/// changes: SET and DELETE (back to the default) of the configurations
/// with a Felix meaning; APPEND and SUBTRACT are for list configurations,
/// which none of them is.
pub fn altered<'a>(
    current: Retention,
    changes: impl IntoIterator<Item = (&'a str, i8, Option<&'a str>)>,
) -> Result<Retention, String> {
    let mut out = current;
    for (name, op, value) in changes {
        match op {
            OP_SET => set(&mut out, name, value)?,
            OP_DELETE => set(&mut out, name, None)?,
            2 | 3 => return Err(format!("{name} is not a list: only SET and DELETE apply")),
            other => return Err(format!("config operation {other} is not Kafka's")),
        }
    }
    Ok(out)
}

/// Sets one configuration in `out` (`None`: its default).
fn set(out: &mut Retention, name: &str, value: Option<&str>) -> Result<(), String> {
    // -1 (or no value) keeps forever on that axis, as in Kafka.
    let limit = |v: Option<&str>| -> Result<Option<u64>, String> {
        match v.map(str::parse::<i64>) {
            None | Some(Ok(-1)) => Ok(None),
            Some(Ok(n)) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(format!("{name} must be -1 or a count, not {v:?}")),
        }
    };
    match name {
        "retention.ms" => out.0 = limit(value)?,
        "retention.bytes" => out.1 = limit(value)?,
        "cleanup.policy" => match value {
            None | Some("delete") => {}
            Some(v) => {
                return Err(format!(
                "cleanup.policy={v}: a topic is a Felix stream (delete); key-compacted data is a Felix cache"
            ))
            }
        },
        other => {
            return Err(format!(
                "{other} is not a configuration this door serves ({})",
                CONFIGS.join(", ")
            ))
        }
    }
    Ok(())
}

/// A stream's topic configurations: (name, value, set on the topic rather
/// than a default).
pub fn configs_of(c: &StreamConfig) -> Vec<(&'static str, String, bool)> {
    let limit = |v: Option<u64>| v.map_or(("-1".to_owned(), false), |n| (n.to_string(), true));
    let (ms, ms_set) = limit(c.retention_ms);
    let (bytes, bytes_set) = limit(c.retention_bytes);
    vec![
        ("retention.ms", ms, ms_set),
        ("retention.bytes", bytes, bytes_set),
        ("cleanup.policy", "delete".to_owned(), false),
    ]
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// A resource's error code and message, from what altering it came to.
fn answered(outcome: Result<(), (i16, String)>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((code, why)) => (code, Some(s(&why))),
    }
}

impl<H: Handler> Door<H> {
    async fn topic_exists(&self, cx: &Cx<'_, H::Session>, stream: &str) -> Result<bool, i16> {
        match self
            .ask(
                cx.session,
                Message::StreamDescribe {
                    name: stream.to_owned(),
                },
            )
            .await
        {
            Ok(Message::StreamDescription { config, .. }) => Ok(config.kind != StreamKind::Cache),
            Ok(_) => Ok(false),
            Err(ErrorReply::UnknownStream(_)) => Ok(false),
            Err(e) => Err(code_of(&e)),
        }
    }

    pub(crate) async fn create_topics(
        &self,
        cx: &Cx<'_, H::Session>,
        r: CreateTopicsRequest,
    ) -> CreateTopicsResponse {
        let mut resp = CreateTopicsResponse::default();
        for t in r.topics {
            let mut tr = create_topics_response::CreatableTopicResult::default();
            let topic = t.name.0.as_str().to_owned();
            let outcome = self.create_one(cx, &topic, &t, r.validate_only).await;
            tr.name = t.name;
            tr.num_partitions = -1;
            tr.replication_factor = -1;
            match outcome {
                Ok(partitions) => tr.num_partitions = partitions as i32,
                Err((code, why)) => {
                    tr.error_code = code;
                    tr.error_message = Some(s(&why));
                }
            }
            resp.topics.push(tr);
        }
        resp
    }

    async fn create_one(
        &self,
        cx: &Cx<'_, H::Session>,
        topic: &str,
        t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
        validate_only: bool,
    ) -> Result<u32, (i16, String)> {
        let stream = self
            .stream(cx.tenant, topic)
            .map_err(|why| (INVALID_TOPIC_EXCEPTION, why.to_owned()))?;
        if !t.assignments.is_empty() {
            return Err((
                INVALID_REPLICA_ASSIGNMENT,
                "replica assignments are Felix placement's to decide".into(),
            ));
        }
        let partitions = match t.num_partitions {
            -1 => PARTITIONS_DEFAULT,
            n if (1..=PARTITIONS_MAX).contains(&n) => n as u32,
            n => {
                return Err((
                    INVALID_PARTITIONS,
                    format!("{n} partitions (1 to {PARTITIONS_MAX})"),
                ))
            }
        };
        let rf = match t.replication_factor {
            -1 => 0,
            n if (1..=REPLICATION_FACTOR_MAX).contains(&n) => n as u32,
            n => {
                return Err((
                    INVALID_REPLICATION_FACTOR,
                    format!("replication factor {n} (1 to {REPLICATION_FACTOR_MAX}, or -1 for the default)"),
                ))
            }
        };
        let (retention_ms, retention_bytes) = settings_of(
            t.configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
        )
        .map_err(|why| (INVALID_CONFIG, why))?;
        if self
            .topic_exists(cx, &stream)
            .await
            .map_err(|c| (c, String::new()))?
        {
            return Err((TOPIC_ALREADY_EXISTS, format!("{topic} exists")));
        }
        if validate_only {
            return Ok(partitions);
        }
        let mut config = StreamConfig::stream(&stream, partitions, Durability::Always);
        config.retention_ms = retention_ms;
        config.retention_bytes = retention_bytes;
        config.replication_factor = rf;
        match self.ask(cx.session, Message::StreamCreate(config)).await {
            Ok(_) => Ok(partitions),
            Err(ErrorReply::InvalidRequest(why)) => Err((INVALID_REQUEST, why)),
            Err(e) => Err((code_of(&e), e.to_string())),
        }
    }

    pub(crate) async fn delete_topics(
        &self,
        cx: &Cx<'_, H::Session>,
        r: DeleteTopicsRequest,
    ) -> DeleteTopicsResponse {
        let mut resp = DeleteTopicsResponse::default();
        for name in r.topic_names {
            let mut tr = delete_topics_response::DeletableTopicResult::default();
            let topic = name.0.as_str().to_owned();
            tr.name = Some(name);
            let stream = match self.stream(cx.tenant, &topic) {
                Ok(s) => s,
                Err(_) => {
                    tr.error_code = UNKNOWN_TOPIC_OR_PARTITION;
                    resp.responses.push(tr);
                    continue;
                }
            };
            tr.error_code = match self.topic_exists(cx, &stream).await {
                Ok(false) => UNKNOWN_TOPIC_OR_PARTITION,
                Err(code) => code,
                // Kafka deletes a topic whoever reads it.
                Ok(true) => match self
                    .ask(
                        cx.session,
                        Message::StreamDelete {
                            name: stream,
                            force: true,
                        },
                    )
                    .await
                {
                    Ok(_) => 0,
                    Err(ErrorReply::UnknownStream(_)) => UNKNOWN_TOPIC_OR_PARTITION,
                    Err(e) => {
                        tr.error_message = Some(s(&e.to_string()));
                        code_of(&e)
                    }
                },
            };
            resp.responses.push(tr);
        }
        resp
    }

    /// A topic's stream settings, or the error its resource is answered.
    async fn topic_config(&self, cx: &Cx<'_, H::Session>, topic: &str) -> Result<StreamConfig, i16> {
        let stream = self
            .stream(cx.tenant, topic)
            .map_err(|_| UNKNOWN_TOPIC_OR_PARTITION)?;
        match self
            .ask(cx.session, Message::StreamDescribe { name: stream })
            .await
        {
            Ok(Message::StreamDescription { config, .. }) if config.kind != StreamKind::Cache => Ok(config),
            Ok(_) | Err(ErrorReply::UnknownStream(_)) => Err(UNKNOWN_TOPIC_OR_PARTITION),
            Err(e) => Err(code_of(&e)),
        }
    }

    /// One resource of an AlterConfigs or IncrementalAlterConfigs:
    /// `change` gives the topic's new retention from its current one.
    async fn alter_one(
        &self,
        cx: &Cx<'_, H::Session>,
        resource_type: i8,
        topic: &str,
        validate_only: bool,
        change: impl FnOnce(Retention) -> Result<Retention, String>,
    ) -> Result<(), (i16, String)> {
        match resource_type {
            RESOURCE_TOPIC => {}
            RESOURCE_BROKER => {
                return Err((
                    INVALID_REQUEST,
                    "a broker's settings are its Felix configuration file".into(),
                ))
            }
            other => return Err((INVALID_REQUEST, format!("resource type {other} is not served"))),
        }
        let config = self
            .topic_config(cx, topic)
            .await
            .map_err(|code| (code, format!("topic {topic}")))?;
        let (retention_ms, retention_bytes) =
            change((config.retention_ms, config.retention_bytes)).map_err(|why| (INVALID_CONFIG, why))?;
        if validate_only {
            return Ok(());
        }
        let set = Message::StreamSetRetention {
            name: config.name,
            retention_ms,
            retention_bytes,
        };
        match self.ask(cx.session, set).await {
            Ok(_) => Ok(()),
            Err(ErrorReply::InvalidRequest(why)) => Err((INVALID_REQUEST, why)),
            Err(e) => Err((code_of(&e), e.to_string())),
        }
    }

    pub(crate) async fn alter_configs(
        &self,
        cx: &Cx<'_, H::Session>,
        r: AlterConfigsRequest,
    ) -> AlterConfigsResponse {
        let mut resp = AlterConfigsResponse::default();
        for res in r.resources {
            let configs: Vec<(&str, Option<&str>)> = res
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str())))
                .collect();
            // Every configuration is replaced: the current ones do not count.
            let outcome = self
                .alter_one(cx, res.resource_type, &res.resource_name, r.validate_only, |_| {
                    settings_of(configs)
                })
                .await;
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
            out.resource_type = res.resource_type;
            (out.error_code, out.error_message) = answered(outcome);
            out.resource_name = res.resource_name;
            resp.responses.push(out);
        }
        resp
    }

    pub(crate) async fn incremental_alter_configs(
        &self,
        cx: &Cx<'_, H::Session>,
        r: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut resp = IncrementalAlterConfigsResponse::default();
        for res in r.resources {
            let changes: Vec<(&str, i8, Option<&str>)> = res
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.as_str(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.as_str()),
                    )
                })
                .collect();
            let outcome = self
                .alter_one(
                    cx,
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    |now| altered(now, changes),
                )
                .await;
            let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            out.resource_type = res.resource_type;
            (out.error_code, out.error_message) = answered(outcome);
            out.resource_name = res.resource_name;
            resp.responses.push(out);
        }
        resp
    }

    pub(crate) async fn describe_configs(
        &self,
        cx: &Cx<'_, H::Session>,
        r: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut resp = DescribeConfigsResponse::default();
        for res in r.resources {
            let mut out = describe_configs_response::DescribeConfigsResult::default();
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name.clone();
            let wanted = |name: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            match res.resource_type {
                // A broker's own settings are Felix's configuration file,
                // not Kafka's: none are listed.
                RESOURCE_BROKER => {}
                RESOURCE_TOPIC => {
                    let topic = res.resource_name.as_str();
                    match self.topic_config(cx, topic).await {
                        Err(code) => {
                            out.error_code = code;
                            out.error_message = Some(s(&format!("topic {topic}")));
                        }
                        Ok(config) => {
                            for (name, value, set) in configs_of(&config) {
                                if !wanted(name) {
                                    continue;
                                }
                                let mut c =
                                    describe_configs_response::DescribeConfigsResourceResult::default();
                                c.name = StrBytes::from_static_str(name);
                                c.value = Some(s(&value));
                                c.read_only = name == "cleanup.policy";
                                c.config_source = if set { SOURCE_TOPIC } else { SOURCE_DEFAULT };
                                out.configs.push(c);
                            }
                        }
                    }
                }
                other => {
                    out.error_code = INVALID_REQUEST;
                    out.error_message = Some(s(&format!("resource type {other} is not served")));
                }
            }
            resp.results.push(out);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_configs_are_felix_retention_and_others_are_refused() {
        assert_eq!(
            settings_of([("retention.ms", Some("60000")), ("retention.bytes", Some("-1"))]),
            Ok((Some(60_000), None))
        );
        assert_eq!(
            settings_of([("cleanup.policy", Some("delete"))]),
            Ok((None, None))
        );
        assert!(settings_of([("cleanup.policy", Some("compact"))]).is_err());
        assert!(settings_of([("retention.ms", Some("soon"))]).is_err());
        assert!(settings_of([("retention.ms", Some("-5"))]).is_err());
        assert!(settings_of([("min.insync.replicas", Some("2"))])
            .unwrap_err()
            .contains("retention.ms"));
        // IncrementalAlterConfigs changes only what it names.
        assert_eq!(
            altered((Some(5), Some(7)), [("retention.ms", OP_SET, Some("60000"))]),
            Ok((Some(60_000), Some(7)))
        );
        assert_eq!(
            altered((Some(5), Some(7)), [("retention.bytes", OP_DELETE, None)]),
            Ok((Some(5), None))
        );
        assert!(altered((None, None), [("retention.ms", 2, Some("1"))]).is_err());
        assert!(altered((None, None), [("retention.ms", 9, Some("1"))]).is_err());
        assert!(altered((None, None), [("segment.ms", OP_SET, Some("1"))]).is_err());
        assert!(altered((None, None), [("cleanup.policy", OP_SET, Some("compact"))]).is_err());
        let mut c = StreamConfig::stream("t/n/s", 1, Durability::Always);
        c.retention_ms = Some(5);
        let got = configs_of(&c);
        assert_eq!(got[0], ("retention.ms", "5".to_owned(), true));
        assert_eq!(got[1], ("retention.bytes", "-1".to_owned(), false));
    }
}
