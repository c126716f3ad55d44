//! The configuration schema as a list of keys, taken from the types
//! themselves (their doc comments and defaults, through `schemars`). It is
//! what `docs/configuration.md` is generated from and what `FELIX_*`
//! variables are checked against, so neither can drift from the code.

use schemars::JsonSchema;
use serde_json::Value;

/// One key of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted path; `[]` marks a key of each entry of an array of tables.
    pub key: String,
    pub ty: String,
    /// The default as TOML would write it; `None`: the key is required.
    pub default: Option<String>,
    pub doc: String,
}

pub fn broker() -> Vec<KeyDoc> {
    keys::<super::BrokerConfig>()
}

pub fn controlplane() -> Vec<KeyDoc> {
    keys::<felix_controlplane::config::NodeConfig>()
}

fn keys<T: JsonSchema>() -> Vec<KeyDoc> {
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    let defs = root.get("$defs").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk(
        root,
        &defs,
        "",
        &root.get("default").cloned().unwrap_or(Value::Null),
        &mut out,
    );
    out
}

/// A schema with `$ref`s and `Option`'s `anyOf [T, null]` resolved.
fn resolve<'a>(s: &'a Value, defs: &'a Value) -> (&'a Value, bool) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return (defs.get(name).unwrap_or(s), false);
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        let real: Vec<&Value> = any
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .collect();
        if real.len() == 1 && any.len() == 2 {
            return (resolve(real[0], defs).0, true);
        }
    }
    (s, false)
}

fn walk(table: &Value, defs: &Value, prefix: &str, defaults: &Value, out: &mut Vec<KeyDoc>) {
    let Some(props) = table.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = table
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let key = format!("{prefix}{name}");
        let (inner, optional) = resolve(prop, defs);
        let doc = doc_of(prop).or_else(|| doc_of(inner)).unwrap_or_default();
        // A field's own default, else its value in the enclosing table's.
        let default = prop
            .get("default")
            .cloned()
            .or_else(|| defaults.get(name).cloned())
            .unwrap_or(Value::Null);
        let has_default = !required.contains(&name.as_str()) || prop.get("default").is_some();
        if inner.get("properties").is_some() {
            out.push(KeyDoc {
                key: key.clone(),
                ty: if optional {
                    "table, optional".into()
                } else {
                    "table".into()
                },
                default: None,
                doc,
            });
            walk(inner, defs, &format!("{key}."), &default, out);
            continue;
        }
        let items = inner.get("items").map(|i| resolve(i, defs).0);
        if let Some(item) = items.filter(|i| i.get("properties").is_some()) {
            out.push(KeyDoc {
                key: key.clone(),
                ty: "array of tables".into(),
                default: has_default.then(|| toml_text(&default).unwrap_or_else(|| "[]".into())),
                doc,
            });
            walk(item, defs, &format!("{key}[]."), &Value::Null, out);
            continue;
        }
        out.push(KeyDoc {
            key,
            ty: type_of(inner, defs),
            default: if has_default {
                Some(toml_text(&default).unwrap_or_else(|| UNSET.into()))
            } else {
                None
            },
            doc,
        });
    }
}

fn doc_of(s: &Value) -> Option<String> {
    s.get("description")
        .and_then(Value::as_str)
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn type_of(s: &Value, defs: &Value) -> String {
    let base = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" | "),
        _ => match s.get("anyOf") {
            Some(_) => type_of(resolve(s, defs).0, defs),
            None => "value".into(),
        },
    };
    match (base.as_str(), s.get("items")) {
        ("array", Some(i)) => format!("array of {}", type_of(resolve(i, defs).0, defs)),
        _ => base,
    }
}

/// A JSON default as a TOML literal (`None` for null).
fn toml_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(format!("{s:?}")),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        other => {
            let t: toml::Value = serde_json::from_value(other.clone()).ok()?;
            Some(t.to_string())
        }
    }
}

/// The default of an optional key that is absent unless set.
pub const UNSET: &str = "(unset)";

/// `docs/configuration.md`: the keys of both files with their defaults.
pub fn markdown() -> String {
    let mut s = String::from(
        "# Configuration\n\n\
         <!-- Generated by `felix config docs > docs/configuration.md`; a test fails when it is stale. -->\n\n\
         Felix runs as two kinds of process, each from one TOML file of the schema below: a broker\n\
         (`felix broker --config FILE`) and a control-plane node (`felix controlplane --config FILE`).\n\
         `felix dev` needs no file. Conventions shared by both:\n\n\
         - Every key has the default shown unless it says *required*; an empty broker file is a valid\n  single-node broker.\n\
         - Units are the last part of a name: `_ms`, `_s`, `_bytes`; `_max` is a limit.\n\
         - A key the schema does not have, or a value of the wrong type, is refused at start with the\n  key's name. `felix config check FILE` checks a file (and the environment) without starting.\n\
         - Environment variables override the file: `FELIX_<KEY>` for a broker, `FELIX_CP_<KEY>` for a\n  control-plane node, upper case, with `__` between a table and its key\n  (`FELIX_CLUSTER__WRITE_TIMEOUT_MS=8000`). A value is read as TOML when it parses as TOML\n  (`3`, `true`, `[\"http://cp:7000\"]`) and as a string otherwise. A variable that names no key\n  is refused. `FELIX_LOG`, `FELIX_LOG_FORMAT` and `FELIX_PROFILE` are not keys (below).\n\
         - SIGHUP makes a broker read its file again and apply the keys marked *reloadable*; a change\n  to any other key is logged as needing a restart and is not applied. An invalid file is\n  refused whole and the running settings stay.\n\n\
         Outside the files: `FELIX_LOG` sets log levels when `log_level` is absent (default `warn`),\n\
         `FELIX_LOG_FORMAT=json` writes one JSON object per log line, and `FELIX_PROFILE` points the\n\
         client commands at a client profile.\n\n",
    );
    for (title, keys) in [("Broker", broker()), ("Control-plane node", controlplane())] {
        s.push_str(&format!(
            "## {title}\n\n| Key | Type | Default | |\n|---|---|---|---|\n"
        ));
        for k in keys {
            let default = match &k.default {
                None if k.ty.starts_with("table") => String::new(),
                None => "*required*".into(),
                Some(d) if d == UNSET => "unset".into(),
                Some(d) => format!("`{}`", d.replace('|', "\\|")),
            };
            let reload = if is_reloadable(&k.key) {
                " *Reloadable.*"
            } else {
                ""
            };
            s.push_str(&format!(
                "| `{}` | {} | {} | {}{} |\n",
                k.key,
                k.ty,
                default,
                k.doc.replace('|', "\\|").replace(" Reloaded on SIGHUP.", ""),
                reload
            ));
        }
        s.push('\n');
    }
    s
}

/// The broker keys SIGHUP applies (`BrokerConfig::reloadable`).
pub fn is_reloadable(key: &str) -> bool {
    key == "log_level" || key.starts_with("defaults.") || key.starts_with("quotas.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_and_nested_keys_are_found() {
        let b = broker();
        for k in b.iter().chain(controlplane().iter()) {
            assert!(!k.doc.is_empty(), "{} has no doc comment", k.key);
        }
        let find = |k: &str| {
            b.iter()
                .find(|e| e.key == k)
                .unwrap_or_else(|| panic!("{k} missing"))
        };
        assert_eq!(find("log.segment_bytes").default.as_deref(), Some("67108864"));
        assert_eq!(find("cluster.write_timeout_ms").default.as_deref(), Some("5000"));
        assert_eq!(find("cluster.raft_listen").default, None, "required");
        assert_eq!(find("cluster.advertise_raft").default.as_deref(), Some("(unset)"));
        assert_eq!(
            find("controlplane.require_tokens").default.as_deref(),
            Some("true")
        );
        assert_eq!(find("listen").default.as_deref(), Some("\"127.0.0.1:7070\""));
        let cp = controlplane();
        assert!(cp
            .iter()
            .any(|k| k.key == "cluster_secret" && k.default.is_none()));
        assert!(cp
            .iter()
            .any(|k| k.key == "replace_after_ms" && k.default.as_deref() == Some("60000")));
    }

    #[test]
    fn every_key_of_a_full_file_is_in_the_schema() {
        // A file setting every optional table: its keys, flattened, must
        // all be listed (the walk above could miss a kind of field).
        let t = crate::config::local_cluster_toml(
            &crate::config::LocalMember {
                id: 1,
                client: "127.0.0.1:1".parse().unwrap(),
                raft: "127.0.0.1:2".parse().unwrap(),
                data_dir: "/tmp/x".into(),
            },
            Some("127.0.0.1:9".parse().unwrap()),
            &felix_client::transport::IssuedCertificate {
                cert: "/tmp/b.pem".into(),
                key: "/tmp/b.key".into(),
                ca: "/tmp/ca.pem".into(),
            },
            "admin_listen = \"127.0.0.1:0\"\nadvertise = \"h:1\"\nlog_level = \"info\"\n[controlplane]\nurls = [\"http://a:1\"]\nsecret = \"0123456789abcdef\"\nzone = \"z\"\n[defaults]\nretention_ms = 5\nretention_bytes = 5\n[quotas]\npublish_records_per_s_max = 1\npublish_bytes_per_s_max = 1\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n",
        );
        let c: crate::config::BrokerConfig = toml::from_str(&t).unwrap();
        let full = toml::Table::try_from(&c).unwrap();
        let listed: Vec<String> = broker().into_iter().map(|k| k.key).collect();
        let mut flat = Vec::new();
        flatten("", &full, &mut flat);
        for k in flat {
            assert!(listed.contains(&k), "{k} is not in the schema: {listed:?}");
        }
    }

    fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            match v {
                toml::Value::Table(inner) => flatten(&format!("{prefix}{k}."), inner, out),
                toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                    for x in a {
                        flatten(&format!("{prefix}{k}[]."), x.as_table().expect("checked"), out);
                    }
                }
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }

    #[test]
    fn the_configuration_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != markdown() {
            if std::env::var("FELIX_WRITE_GOLDEN").is_ok() {
                std::fs::write(&path, markdown()).unwrap();
                return;
            }
            panic!(
                "docs/configuration.md is stale: run `felix config docs > docs/configuration.md` (or FELIX_WRITE_GOLDEN=1 cargo test)"
            );
        }
    }
}
