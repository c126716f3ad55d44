//! `FELIX_*` environment variables over a configuration file, as container
//! platforms set them: `FELIX_BROKER_ID=3` sets `broker_id`, and a double
//! underscore descends into a table, so `FELIX_CLUSTER__WRITE_TIMEOUT_MS`
//! sets `cluster.write_timeout_ms`. A value is read as a TOML value when it
//! is one (`3`, `true`, `["http://cp:7000"]`) and as a string otherwise
//! (`127.0.0.1:7070`, `/var/lib/felix`). A control-plane node reads
//! `FELIX_CP_*` the same way.
//!
//! A variable naming no key is refused with its name rather than ignored:
//! a typo in a deployment manifest should stop the process, not be lost.

/// Which process's keys a variable may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Broker,
    ControlPlane,
}

/// Variables that are not configuration keys: the client profile, log
/// format, test and benchmark switches.
const NOT_KEYS: &[&str] = &[
    "FELIX_LOG",
    "FELIX_LOG_FORMAT",
    "FELIX_PROFILE",
    "FELIX_BIN",
    "FELIX_BENCH_KEEP",
    "FELIX_CI_LONG",
    "FELIX_FAILPOINT",
    "FELIX_CLOCK_SKEW_FILE",
    "FELIX_ROUND",
    "FELIX_SEED",
    "FELIX_SOAK_SECS",
    "FELIX_TEST_LOG",
    "FELIX_ISSUER",
    "FELIX_AUDIENCE",
    "FELIX_WRITE_CORPUS",
    "FELIX_WRITE_GOLDEN",
];

/// Prefixes of variables that belong to the benchmarks, their peers and the
/// tests (`FELIX_PEERS_DIR` finds `../shared/peers`, `FELIX_TEST_PYTHON` the
/// redis-py venv): a broker started under them inherits them and must not
/// take them for misspelt keys.
const NOT_KEY_PREFIXES: &[&str] = &["FELIX_BENCH_", "FELIX_PEERS_", "FELIX_TEST_"];

/// Whether a variable is one of the switches above rather than a key.
pub fn is_switch(var: &str) -> bool {
    NOT_KEYS.contains(&var)
        || NOT_KEY_PREFIXES.iter().any(|p| var.starts_with(p))
        || var.ends_with("_CHILD_DIR")
}

/// Variables past this many are refused (each may carry a whole table).
pub const VARS_MAX: usize = 256;

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Broker => "FELIX_",
            Role::ControlPlane => "FELIX_CP_",
        }
    }

    /// Whether a variable is this role's to read.
    fn owns(self, var: &str) -> bool {
        if !var.starts_with(self.prefix()) || is_switch(var) {
            return false;
        }
        // The broker leaves the control plane's variables alone.
        !(self == Role::Broker && var.starts_with(Role::ControlPlane.prefix()))
    }

    /// The keys this role's configuration has, as dotted paths.
    fn keys(self) -> Vec<String> {
        let entries = match self {
            Role::Broker => super::schema::broker(),
            Role::ControlPlane => super::schema::controlplane(),
        };
        entries.into_iter().map(|e| e.key).collect()
    }
}

/// Sets the keys `vars` name in `doc`. Returns the variables applied.
pub fn apply(
    doc: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    role: Role,
) -> Result<Vec<String>, String> {
    let mut mine: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| role.owns(k)).collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    if mine.len() > VARS_MAX {
        return Err(format!("more than {VARS_MAX} {}* variables", role.prefix()));
    }
    mine.sort();
    let known = role.keys();
    let mut applied = Vec::with_capacity(mine.len());
    for (var, raw) in mine {
        let path: Vec<String> = var[role.prefix().len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let key = path.join(".");
        // A whole table (`FELIX_CLUSTER`) or one of its keys.
        let is_key = known
            .iter()
            .any(|k| *k == key || k.starts_with(&format!("{key}.")));
        if path.iter().any(String::is_empty) || !is_key {
            return Err(format!(
                "{var} names no configuration key ({key:?}); see docs/configuration.md"
            ));
        }
        let value = value_of(&raw);
        let mut table = &mut *doc;
        for part in &path[..path.len() - 1] {
            let slot = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match slot {
                toml::Value::Table(t) => t,
                _ => return Err(format!("{var}: {part} is not a table in the file")),
            };
        }
        table.insert(path[path.len() - 1].clone(), value);
        applied.push(var);
    }
    Ok(applied)
}

/// A variable's text as a TOML value, else as a string.
fn value_of(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn variables_set_keys_tables_and_typed_values() {
        let mut doc: toml::Table = toml::from_str("broker_id = 1\n[log]\nsegment_ms = 5").unwrap();
        let applied = apply(
            &mut doc,
            vars(&[
                ("FELIX_BROKER_ID", "7"),
                ("FELIX_LISTEN", "127.0.0.1:9000"),
                ("FELIX_LOG__SEGMENT_BYTES", "1048576"),
                ("FELIX_DEFAULTS__RETENTION_MS", "60000"),
                ("FELIX_LOG", "debug"),
                ("FELIX_CP_ID", "2"),
                ("HOME", "/root"),
            ]),
            Role::Broker,
        )
        .unwrap();
        assert_eq!(applied.len(), 4, "{applied:?}");
        assert_eq!(doc["broker_id"].as_integer(), Some(7));
        assert_eq!(doc["listen"].as_str(), Some("127.0.0.1:9000"));
        assert_eq!(doc["log"]["segment_bytes"].as_integer(), Some(1 << 20));
        assert_eq!(
            doc["log"]["segment_ms"].as_integer(),
            Some(5),
            "the file's other keys stay"
        );
        assert_eq!(doc["defaults"]["retention_ms"].as_integer(), Some(60_000));
    }

    #[test]
    fn a_variable_naming_no_key_is_refused_by_name() {
        let mut doc = toml::Table::new();
        let e = apply(&mut doc, vars(&[("FELIX_LISTNE", "x")]), Role::Broker).unwrap_err();
        assert!(e.contains("FELIX_LISTNE"), "{e}");
        let e = apply(&mut doc, vars(&[("FELIX_CLUSTER__", "x")]), Role::Broker).unwrap_err();
        assert!(e.contains("FELIX_CLUSTER__"), "{e}");
        // A control-plane key through the control plane's prefix.
        let mut doc = toml::Table::new();
        apply(
            &mut doc,
            vars(&[("FELIX_CP_REPLACE_AFTER_MS", "1000")]),
            Role::ControlPlane,
        )
        .unwrap();
        assert_eq!(doc["replace_after_ms"].as_integer(), Some(1000));
    }

    #[test]
    fn benchmark_and_test_switches_are_not_taken_for_keys() {
        // `felix-bench peers` is documented with FELIX_PEERS_DIR set; the
        // brokers it starts inherit it.
        let mut doc = toml::Table::new();
        let set = vars(&[
            ("FELIX_PEERS_DIR", "/tmp/peers"),
            ("FELIX_PEERS_HOME", "/tmp/home"),
            ("FELIX_BENCH_KEEP", "1"),
            // `.ci/run` exports the redis-py venv's Python to the tests,
            // whose brokers inherit it.
            ("FELIX_TEST_PYTHON", "/root/.cache/felix-venv/bin/python3"),
            ("FELIX_BROKER_ID", "4"),
        ]);
        assert_eq!(
            apply(&mut doc, set, Role::Broker).unwrap(),
            vec!["FELIX_BROKER_ID".to_string()]
        );
        assert_eq!(doc["broker_id"].as_integer(), Some(4));
        // A misspelt key is still refused.
        let e = apply(&mut doc, vars(&[("FELIX_PEER_DIR", "x")]), Role::Broker).unwrap_err();
        assert!(e.contains("FELIX_PEER_DIR"), "{e}");
    }

    #[test]
    fn a_bad_value_from_a_variable_is_refused_naming_the_key() {
        let e =
            crate::config::BrokerConfig::parse("", vars(&[("FELIX_BROKER_ID", "\"seven\"")])).unwrap_err();
        assert!(e.contains("broker_id"), "{e}");
        let c = crate::config::BrokerConfig::parse(
            "",
            vars(&[("FELIX_ADMIN_LISTEN", "127.0.0.1:0"), ("FELIX_LOG_LEVEL", "info")]),
        )
        .unwrap();
        assert_eq!(c.admin_listen.map(|a| a.port()), Some(0));
        assert_eq!(c.log_level.as_deref(), Some("info"));
    }
}
