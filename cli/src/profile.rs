//! The client profile and the connection every client command makes
//! through it, with the hint a broker's refusal gets: what `commands`
//! and `status` share.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use felix_broker::server::ClientProfile;
use felix_client::transport::ClientTls;
use felix_client::{Client, ClientConfig};

/// Where a profile is looked for when none is given.
pub const DEFAULT_PROFILE: &str = "./felix-data/client.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Options every client command takes.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Client profile (default: $FELIX_PROFILE, else ./felix-data/client.toml).
    #[arg(long, global = true)]
    pub profile: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The profile to use and where it came from.
pub fn profile_path(c: &Common) -> (PathBuf, &'static str) {
    if let Some(p) = &c.profile {
        return (p.clone(), "--profile");
    }
    if let Ok(p) = std::env::var("FELIX_PROFILE") {
        return (PathBuf::from(p), "FELIX_PROFILE");
    }
    (PathBuf::from(DEFAULT_PROFILE), "the default location")
}

/// A broker's refusal with what the user can do about it.
pub fn with_hint(e: anyhow::Error) -> anyhow::Error {
    use felix_client::wire::ErrorReply as R;
    use felix_client::ClientError as C;
    let reply = e.chain().find_map(|c| {
        c.downcast_ref::<R>().or_else(|| match c.downcast_ref::<C>() {
            Some(C::Broker(r)) => Some(r),
            Some(C::RetriesExhausted { last, .. }) => match last.as_ref() {
                C::Broker(r) => Some(r),
                _ => None,
            },
            _ => None,
        })
    });
    let client = e.chain().find_map(|c| c.downcast_ref::<C>());
    let hint = match (reply, client) {
        (Some(R::UnknownStream(_)), _) | (_, Some(C::UnknownStream(_))) => {
            "no such stream or cache: create it with `felix stream create NAME` (or `felix cache create`), or see `felix stream list`"
        }
        (Some(R::Unauthorized(_)), _) => {
            "the broker refused the profile's token: `felix dev` writes a fresh one each time it starts; elsewhere get one from the control plane (POST /v1/tenants/{tenant}/token/exchange)"
        }
        (Some(R::Forbidden(_)), _) => {
            "the token does not allow this: ask the tenant's administrator for a role with the permission named above"
        }
        (Some(R::Overloaded { .. }), _) => {
            "over a quota or a limit: retry after the time given, or ask for a higher quota"
        }
        (Some(R::QuotaExceeded(_)), _) => {
            "the tenant or namespace holds all its quota allows: delete what it no longer needs (or shorten its retention), or ask the cluster operator for a higher quota"
        }
        (Some(R::NotLeader { .. } | R::Timeout(_)), _) | (_, Some(C::Timeout(_) | C::RetriesExhausted { .. })) => {
            "the cluster may be electing a leader or missing a majority: `felix cluster status` shows brokers down and shards without a leader"
        }
        (Some(R::OffsetOutOfRange { .. }), _) => {
            "start within the range shown, or use --from earliest / latest"
        }
        (_, Some(C::Connect { .. } | C::ConnectionLost(_) | C::CircuitOpen(_))) => {
            "is the broker running? `felix dev` starts one; check the profile's broker addresses"
        }
        _ => return e,
    };
    // The chain, without causes the message before already quotes.
    let mut text = String::new();
    for c in e.chain().map(ToString::to_string) {
        if !text.contains(&c) {
            text = if text.is_empty() {
                c
            } else {
                format!("{text}: {c}")
            };
        }
    }
    anyhow!("{text}\nhint: {hint}")
}

/// Connects using the profile; errors name the profile and the address.
pub async fn connect(c: &Common) -> anyhow::Result<Client> {
    let (path, source) = profile_path(c);
    let p = ClientProfile::load(&path).map_err(|e| {
        anyhow!(
            "cannot read the client profile {} (from {source}): {e}\n\
             hint: start a broker with `felix dev`, which writes ./felix-data/client.toml, \
             or pass --profile FILE",
            path.display()
        )
    })?;
    connect_profile(&p, &path).await
}

pub async fn connect_profile(p: &ClientProfile, path: &Path) -> anyhow::Result<Client> {
    let identity = match (&p.cert, &p.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let tls = ClientTls::from_pem_files(&p.ca, identity)
        .with_context(|| format!("TLS files of profile {}", path.display()))?;
    let broker = p
        .brokers
        .first()
        .ok_or_else(|| anyhow!("profile {} lists no brokers", path.display()))?;
    let mut cfg = ClientConfig::new(broker.clone(), tls);
    cfg.brokers = p.brokers.clone();
    cfg.server_name = p.server_name.clone();
    if let Some(t) = &p.token {
        cfg.token = bytes::Bytes::from(t.clone());
    }
    let client = Client::connect(cfg).await.map_err(|e| {
        let hint = if e.to_string().contains("unauthorized") {
            "the broker refused the profile's token; `felix dev` writes a fresh one each time it starts, \
             and a control plane issues one at /v1/tenants/{tenant}/token/exchange"
        } else {
            "is `felix dev` running?"
        };
        anyhow!(
            "cannot reach the broker at {} (profile {}): {e}\nhint: {hint}",
            p.brokers.join(", "),
            path.display()
        )
    })?;
    Ok(client)
}
