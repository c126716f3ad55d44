//! `felix bridge`: a tenant's streams carried to another region's cluster,
//! made and watched through the control plane's operator API
//! (`/v1/bridges`, `docs/security.md` "Bridges"); the brokers that lead
//! the streams' shards do the carrying.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use felix_controlplane::auth::TOKEN_BYTES_MAX;
use felix_controlplane::model::{bridge_name_problem, BridgeSpec, BridgeTarget, BRIDGE_CA_PEM_BYTES_MAX};
use reqwest::Method;
use serde_json::{json, Value};

use crate::operator::Operator;
use crate::profile::{Common, Output};

/// Largest token file read: a token longer than the brokers take is
/// refused anyway, and a file far past it is not a token.
const TOKEN_FILE_BYTES_MAX: u64 = 2 * TOKEN_BYTES_MAX as u64;

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// Carry a tenant's streams to a cluster of another region, as a Felix
    /// client publishing there (to streams of the same names).
    Create(CreateArgs),
    /// One line per bridge: name, tenant, target region, running or
    /// paused, streams.
    List,
    /// A bridge as JSON, with its lag per source shard as the brokers
    /// last reported it (its token is never shown).
    Describe { name: String },
    /// Stop sending; the bridge keeps its source positions.
    Pause { name: String },
    /// Send again from where the bridge stopped.
    Resume { name: String },
    /// Delete a bridge (what reached the target stays there).
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// The tenant whose streams it carries.
    #[arg(long)]
    pub tenant: String,
    /// A `namespace/stream` of the tenant; either part may be `*` (any).
    /// Repeat for more.
    #[arg(long = "stream", required = true)]
    pub streams: Vec<String>,
    /// The target cluster's region (not this one's).
    #[arg(long)]
    pub target_region: String,
    /// A target broker's `host:port`; repeat for more.
    #[arg(long = "target-broker", required = true)]
    pub target_brokers: Vec<String>,
    /// The name the target brokers' certificates must carry.
    #[arg(long, default_value = "localhost")]
    pub target_server_name: String,
    /// PEM of the CA the target brokers' certificates chain to.
    #[arg(long)]
    pub target_ca: PathBuf,
    /// A file holding a Felix token of the target cluster allowed to
    /// publish there (omit when the target requires none).
    #[arg(long)]
    pub target_token_file: Option<PathBuf>,
}

/// The spec `a` asks for, its files read and the whole checked as the
/// control plane will, so a mistake is named before anything is sent.
pub fn spec(a: &CreateArgs) -> anyhow::Result<BridgeSpec> {
    check_name(&a.name)?;
    let ca_pem = read_bounded(&a.target_ca, BRIDGE_CA_PEM_BYTES_MAX as u64, "--target-ca")?;
    let token = match &a.target_token_file {
        // Trimmed: a file written by `echo` ends in a newline, which is
        // not part of the token.
        Some(f) => read_bounded(f, TOKEN_FILE_BYTES_MAX, "--target-token-file")?
            .trim()
            .to_owned(),
        None => String::new(),
    };
    let spec = BridgeSpec {
        tenant: a.tenant.clone(),
        streams: a.streams.clone(),
        target: BridgeTarget {
            region: a.target_region.clone(),
            brokers: a.target_brokers.clone(),
            server_name: a.target_server_name.clone(),
            ca_pem,
            token,
        },
    };
    if let Err(why) = spec.validate() {
        bail!("bridge {}: {why}", a.name);
    }
    Ok(spec)
}

/// `file`'s text, refused past `max` bytes before it is read whole.
fn read_bounded(file: &Path, max: u64, flag: &str) -> anyhow::Result<String> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("{flag} {}", file.display()))?
        .len();
    if len > max {
        bail!(
            "{flag} {}: {len} bytes, more than the {max} a bridge takes",
            file.display()
        );
    }
    std::fs::read_to_string(file).with_context(|| format!("{flag} {}", file.display()))
}

/// `felix bridge ...`.
pub async fn run(c: &Common, cmd: BridgeCommand) -> anyhow::Result<()> {
    match cmd {
        BridgeCommand::Create(a) => {
            let spec = spec(&a)?;
            let op = Operator::from_profile(c)?;
            let v = op
                .call(
                    Method::POST,
                    "/v1/bridges",
                    Some(json!({"name": a.name, "spec": spec})),
                )
                .await?;
            match c.output {
                Output::Json => println!("{v}"),
                Output::Text => println!("bridge {}", summary(&v)),
            }
        }
        BridgeCommand::List => {
            let op = Operator::from_profile(c)?;
            let v = op.call(Method::GET, "/v1/bridges", None).await?;
            let bridges = v["bridges"].as_array().cloned().unwrap_or_default();
            match c.output {
                Output::Json => {
                    for b in &bridges {
                        println!("{b}");
                    }
                }
                Output::Text => {
                    if bridges.is_empty() {
                        eprintln!("no bridges");
                    }
                    for b in &bridges {
                        println!("{}", line(b));
                    }
                }
            }
        }
        BridgeCommand::Describe { name } => {
            let op = Operator::from_profile(c)?;
            let v = op.call(Method::GET, &path(&name)?, None).await?;
            match c.output {
                Output::Json => println!("{v}"),
                Output::Text => println!("{}", serde_json::to_string_pretty(&v)?),
            }
        }
        BridgeCommand::Pause { name } => {
            let v = act(c, Method::POST, &format!("{}/pause", path(&name)?)).await?;
            said(c, &v, || {
                format!("bridge {name} paused: it keeps its source positions and sends nothing until resumed")
            });
        }
        BridgeCommand::Resume { name } => {
            let v = act(c, Method::POST, &format!("{}/resume", path(&name)?)).await?;
            said(c, &v, || {
                format!("bridge {name} resumed: it sends from where it stopped")
            });
        }
        BridgeCommand::Delete { name } => {
            let v = act(c, Method::DELETE, &path(&name)?).await?;
            said(c, &v, || {
                format!("bridge {name} deleted: nothing more is sent; what reached the target stays there")
            });
        }
    }
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    match bridge_name_problem(name) {
        Some(why) => bail!("bridge {name:?}: {why}"),
        None => Ok(()),
    }
}

/// A bridge's route, its name checked first: one with a `/` or `?` would
/// reach another route.
fn path(name: &str) -> anyhow::Result<String> {
    check_name(name)?;
    Ok(format!("/v1/bridges/{name}"))
}

async fn act(c: &Common, method: Method, route: &str) -> anyhow::Result<Value> {
    Operator::from_profile(c)?.call(method, route, None).await
}

fn said(c: &Common, v: &Value, text: impl FnOnce() -> String) {
    match c.output {
        Output::Json => println!("{v}"),
        Output::Text => println!("{}", text()),
    }
}

/// `list`'s line: name, tenant, target region, state, streams.
fn line(b: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    format!(
        "{}  tenant={}  to={}  {}  {}",
        s(&b["name"]),
        s(&b["spec"]["tenant"]),
        s(&b["spec"]["target"]["region"]),
        state(b),
        streams(b)
    )
}

/// What `create` says of the bridge the control plane answered with.
fn summary(b: &Value) -> String {
    let token = if b["spec"]["target"]["token_set"] == json!(true) {
        "with a token"
    } else {
        "without a token"
    };
    format!(
        "{}: tenant {}'s {} to region {} ({token}), {}",
        b["name"].as_str().unwrap_or("?"),
        b["spec"]["tenant"].as_str().unwrap_or("?"),
        streams(b),
        b["spec"]["target"]["region"].as_str().unwrap_or("?"),
        state(b)
    )
}

fn state(b: &Value) -> &'static str {
    if b["paused"] == json!(true) {
        "paused"
    } else {
        "running"
    }
}

fn streams(b: &Value) -> String {
    b["spec"]["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn args(dir: &Path, token: Option<&str>) -> CreateArgs {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, CA).unwrap();
        let token_file = token.map(|t| {
            let f = dir.join("token");
            std::fs::write(&f, t).unwrap();
            f
        });
        CreateArgs {
            name: "acme-eu-us".into(),
            tenant: "acme".into(),
            streams: vec!["pay/*".into(), "audit/logins".into()],
            target_region: "us".into(),
            target_brokers: vec!["us1.example:7070".into()],
            target_server_name: "localhost".into(),
            target_ca: ca,
            target_token_file: token_file,
        }
    }

    #[test]
    fn create_reads_the_ca_and_a_trimmed_token_and_names_a_bad_spec_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&args(dir.path(), Some("abc.def.ghi\n"))).unwrap();
        assert_eq!(s.target.ca_pem, CA);
        assert_eq!(s.target.token, "abc.def.ghi");
        assert_eq!(s.streams, vec!["pay/*", "audit/logins"]);
        assert_eq!(spec(&args(dir.path(), None)).unwrap().target.token, "");
        let mut bad = args(dir.path(), None);
        bad.streams = vec!["orders".into()];
        let e = spec(&bad).unwrap_err().to_string();
        assert!(e.contains("bridge acme-eu-us: stream pattern \"orders\""), "{e}");
        let mut bad = args(dir.path(), None);
        bad.name = "a/b".into();
        let e = spec(&bad).unwrap_err().to_string();
        assert!(e.starts_with("bridge \"a/b\""), "{e}");
        assert!(path("x?y").is_err() && path("ok").unwrap() == "/v1/bridges/ok");
        let mut big = args(dir.path(), None);
        std::fs::write(&big.target_ca, vec![b'x'; BRIDGE_CA_PEM_BYTES_MAX + 1]).unwrap();
        let e = spec(&big).unwrap_err().to_string();
        assert!(e.contains("--target-ca") && e.contains("more than"), "{e}");
        big.target_ca = dir.path().join("missing.pem");
        let e = format!("{:#}", spec(&big).unwrap_err());
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn a_listed_bridge_is_one_line_with_its_state_and_streams() {
        let b = json!({"name": "b1", "paused": true, "spec": {"tenant": "acme", "streams": ["pay/*", "x/y"],
                       "target": {"region": "us", "token_set": false}}});
        assert_eq!(line(&b), "b1  tenant=acme  to=us  paused  pay/*,x/y");
        assert_eq!(
            summary(&b),
            "b1: tenant acme's pay/*,x/y to region us (without a token), paused"
        );
    }
}
