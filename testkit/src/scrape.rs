//! Reading a Prometheus text scrape (`/metrics` of a broker or a
//! control-plane node): fetching it, the value of one series, or the sum
//! over a family.

/// The scrape at `base` (`http://host:port`, without `/metrics`).
pub async fn fetch(http: &reqwest::Client, base: &str) -> String {
    let r = http.get(format!("{base}/metrics")).send().await;
    let r = r.unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"));
    r.text()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"))
}

/// The value of the series written exactly as `name_and_labels` (e.g.
/// `felix_cp_leader` or `name{a="1",b="2"}` in the exporter's label order).
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The sum of every series of family `name` whose labels include each of
/// `labels` (each written `key="value"`); 0 when none does.
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE r counter\n\
        r{route=\"/a\",status=\"200\"} 3\n\
        r{route=\"/a\",status=\"500\"} 1\n\
        r{route=\"/b\",status=\"200\"} 4\n\
        rate{route=\"/a\",status=\"200\"} 100\n\
        up 1\n";

    #[test]
    fn a_series_is_found_by_its_whole_name_and_a_family_sums_by_labels() {
        assert_eq!(series(TEXT, "up"), Some(1.0));
        assert_eq!(series(TEXT, "r{route=\"/b\",status=\"200\"}"), Some(4.0));
        assert_eq!(series(TEXT, "r{route=\"/c\"}"), None);
        assert_eq!(sum(TEXT, "r", &["status=\"200\""]), 7.0, "not the family `rate`");
        assert_eq!(sum(TEXT, "r", &["route=\"/a\"", "status=\"200\""]), 3.0);
        assert_eq!(sum(TEXT, "r", &[]), 8.0);
        assert_eq!(sum(TEXT, "missing", &[]), 0.0);
    }
}
