//! The client commands of `felix`: streams, caches, publish, subscribe and
//! consumer groups, talking to a broker found through a client profile.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use felix_client::wire::{Durability, Message, ShardStats, Start, StreamConfig, StreamKind};
use felix_client::{Client, Route, SubscribeOptions};
use serde_json::json;

use crate::profile::{connect, Common, Output};

/// Shards and durability, which streams and caches are both created with.
#[derive(Debug, Args)]
pub struct Layout {
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// always | interval:<ms> | none
    #[arg(long, default_value = "always")]
    pub durability: Durability,
    /// Replicas of each shard (1 to 7); default: 3, or one per broker in a
    /// cluster of fewer. Refused when fewer brokers can hold them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(felix_client::wire::message::REPLICATION_FACTOR_MAX)))]
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream.
    Create {
        name: String,
        #[command(flatten)]
        layout: Layout,
        /// Keep records this long (e.g. 7d, 12h, 30m); default forever.
        #[arg(long, value_parser = parse_duration_ms)]
        retention: Option<u64>,
        /// Keep at most this many bytes per shard; default unbounded.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Deliveries after which a consumer group dead-letters a record.
        #[arg(long, default_value_t = 5)]
        max_deliveries: u32,
        /// Keep only the latest record per key (a compacted stream).
        #[arg(long)]
        compacted: bool,
    },
    /// List streams and caches.
    List,
    /// Settings and per-shard offsets of a stream.
    Describe { name: String },
    /// Delete a stream and its data.
    Delete {
        name: String,
        /// Even with subscribers attached (they are ended).
        #[arg(long)]
        force: bool,
    },
    /// Change retention; takes effect within a second.
    SetRetention {
        name: String,
        /// Time to keep (e.g. 1h) or `none` for forever.
        #[arg(long)]
        time: Option<String>,
        /// Bytes per shard or `none` for unbounded.
        #[arg(long)]
        bytes: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Create a cache.
    Create {
        name: String,
        #[command(flatten)]
        layout: Layout,
        /// TTL of a put that gives none (e.g. 10m); default none.
        #[arg(long, value_parser = parse_duration_ms)]
        ttl: Option<u64>,
    },
    /// Write a value; prints its version.
    Put {
        name: String,
        key: String,
        value: String,
        #[arg(long, value_parser = parse_duration_ms)]
        ttl: Option<u64>,
        /// Write only if the key's version is this (0: only if absent).
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Read a value.
    Get { name: String, key: String },
    /// Delete a key.
    Del {
        name: String,
        key: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Lease records as a member of a consumer group, print them and ack them.
    Consume {
        stream: String,
        #[arg(long)]
        group: String,
        /// Stop after this many records (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Lease time (e.g. 30s).
        #[arg(long, value_parser = parse_duration_ms, default_value = "30s")]
        lease: u64,
        /// Print without acking: the records are redelivered when the lease ends.
        #[arg(long)]
        no_ack: bool,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    pub stream: String,
    /// Key of every record (routes to hash(key) mod shards).
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub shard: Option<u32>,
    /// Read records (one per line) from this file instead of stdin (with
    /// a progress bar on a terminal).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Print one summary at the end instead of a line per record.
    #[arg(long)]
    pub quiet: bool,
    /// Seal every value under this key file's newest key before it leaves
    /// (end-to-end encryption; `felix value-key new FILE` makes one). The
    /// brokers never see the value.
    #[arg(long)]
    pub value_keys: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    pub stream: String,
    /// earliest | latest | offset:N | time:RFC3339
    #[arg(long, default_value = "latest")]
    pub from: String,
    #[arg(long)]
    pub shard: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// A named subscription: resumes from its committed cursor, commits as it goes.
    #[arg(long)]
    pub name: Option<String>,
    /// Write the records to this file instead of stdout (a replay, with a
    /// progress bar on a terminal).
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// Open every value with this key file's keys (values sealed by
    /// `felix publish --value-keys`); a value that does not open stops the
    /// command, saying why (wrong key, another stream, altered bytes).
    #[arg(long)]
    pub value_keys: Option<PathBuf>,
}

/// `500ms`, `30s`, `5m`, `7d`, or a number of milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 30s, 5m, 7d)"))
}

fn parse_limit(
    s: Option<&str>,
    what: &str,
    parse: impl Fn(&str) -> Result<u64, String>,
) -> anyhow::Result<Option<u64>> {
    match s {
        None | Some("none") => Ok(None),
        Some(v) => parse(v).map(Some).map_err(|e| anyhow!("--{what}: {e}")),
    }
}

fn parse_start(s: &str) -> anyhow::Result<Start> {
    Ok(match s {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        _ => {
            if let Some(o) = s.strip_prefix("offset:") {
                Start::Offset(
                    o.parse()
                        .with_context(|| format!("--from {s}: offset must be a number"))?,
                )
            } else if let Some(t) = s.strip_prefix("time:") {
                let t = humantime::parse_rfc3339_weak(t).with_context(|| {
                    format!("--from {s}: expected an RFC 3339 time like 2026-11-22T10:00:00Z")
                })?;
                let ms = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|_| anyhow!("--from {s}: before 1970"))?
                    .as_millis() as i64;
                Start::Time(ms)
            } else {
                bail!("--from {s}: expected earliest, latest, offset:N or time:RFC3339")
            }
        }
    })
}

async fn admin(client: &Client, m: Message) -> anyhow::Result<Message> {
    match client.call(Route::Any, &m).await? {
        Message::Error(e) => Err(e.into()),
        m => Ok(m),
    }
}

/// As the JSON output spells it.
fn kind_name(k: StreamKind) -> &'static str {
    match k {
        StreamKind::Stream => "stream",
        StreamKind::Compacted => "compacted",
        StreamKind::Cache => "cache",
    }
}

fn fmt_opt_ms(v: Option<u64>) -> String {
    v.map_or("forever".into(), |ms| {
        humantime::format_duration(Duration::from_millis(ms)).to_string()
    })
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

/// A record's bytes as JSON: text when UTF-8, else base64.
fn bytes_json(b: &[u8]) -> (serde_json::Value, bool) {
    match std::str::from_utf8(b) {
        Ok(s) => (json!(s), false),
        Err(_) => (json!(base64::engine::general_purpose::STANDARD.encode(b)), true),
    }
}

fn record_json(
    shard: u32,
    offset: u64,
    key: Option<&[u8]>,
    value: &[u8],
    ts: i64,
    extra: serde_json::Value,
) -> serde_json::Value {
    let (v, v64) = bytes_json(value);
    let (k, k64) = key.map_or((serde_json::Value::Null, false), bytes_json);
    let mut o = json!({"shard": shard, "offset": offset, "key": k, "value": v, "timestamp": ts});
    if v64 || k64 {
        o["encoding"] = json!("base64");
    }
    if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    o
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub async fn stream(c: &Common, cmd: StreamCommand) -> anyhow::Result<()> {
    let client = connect(c).await?;
    match cmd {
        StreamCommand::Create {
            name,
            layout:
                Layout {
                    shards,
                    durability,
                    replication_factor,
                },
            retention,
            retention_bytes,
            max_deliveries,
            compacted,
        } => {
            let cfg = StreamConfig {
                name: name.clone(),
                kind: if compacted {
                    StreamKind::Compacted
                } else {
                    StreamKind::Stream
                },
                shards,
                durability,
                retention_ms: retention,
                retention_bytes,
                max_deliveries,
                default_ttl_ms: None,
                replication_factor: replication_factor.unwrap_or(0),
                key_routing: felix_client::wire::KeyRouting::FOR_NEW,
            };
            admin(&client, Message::StreamCreate(cfg)).await?;
            report(c, json!({"created": name, "shards": shards}), || {
                format!("created {name} with {shards} shard(s)")
            });
        }
        StreamCommand::List => {
            let Message::MetadataReply { streams, .. } =
                admin(&client, Message::Metadata { streams: vec![] }).await?
            else {
                bail!("unexpected reply to a metadata request");
            };
            for s in streams {
                report(
                    c,
                    json!({"name": s.name, "kind": s.kind, "shards": s.shards.len()}),
                    || format!("{}\t{}\t{} shard(s)", s.name, kind_name(s.kind), s.shards.len()),
                );
            }
        }
        StreamCommand::Describe { name } => {
            let (config, shards) = crate::status::describe_from_leaders(&client, &name).await?;
            describe(c, &config, &shards);
        }
        StreamCommand::Delete { name, force } => {
            admin(
                &client,
                Message::StreamDelete {
                    name: name.clone(),
                    force,
                },
            )
            .await?;
            report(c, json!({"deleted": name}), || format!("deleted {name}"));
        }
        StreamCommand::SetRetention { name, time, bytes } => {
            if time.is_none() && bytes.is_none() {
                bail!("give --time and/or --bytes (a value, or `none` for unbounded)");
            }
            let Message::StreamDescription { config, .. } =
                admin(&client, Message::StreamDescribe { name: name.clone() }).await?
            else {
                bail!("unexpected reply to a describe request");
            };
            let retention_ms = match &time {
                Some(t) => parse_limit(Some(t), "time", parse_duration_ms)?,
                None => config.retention_ms,
            };
            let retention_bytes = match &bytes {
                Some(b) => parse_limit(Some(b), "bytes", |s| s.parse::<u64>().map_err(|e| e.to_string()))?,
                None => config.retention_bytes,
            };
            admin(
                &client,
                Message::StreamSetRetention {
                    name: name.clone(),
                    retention_ms,
                    retention_bytes,
                },
            )
            .await?;
            report(
                c,
                json!({"stream": name, "retention_ms": retention_ms, "retention_bytes": retention_bytes}),
                || {
                    format!(
                        "{name}: retention {} / {}",
                        fmt_opt_ms(retention_ms),
                        retention_bytes.map_or("unbounded".into(), |b| format!("{b} bytes"))
                    )
                },
            );
        }
    }
    client.close().await;
    Ok(())
}

fn describe(c: &Common, config: &StreamConfig, shards: &[ShardStats]) {
    if c.output == Output::Json {
        print_json(json!({
            "name": config.name, "kind": config.kind, "durability": config.durability,
            "replication_factor": config.replication_factor, "key_routing": config.key_routing,
            "retention_ms": config.retention_ms, "retention_bytes": config.retention_bytes,
            "max_deliveries": config.max_deliveries, "default_ttl_ms": config.default_ttl_ms,
            "shards": shards.iter().map(|s| json!({"shard": s.shard, "earliest": s.earliest, "latest": s.next, "bytes": s.bytes, "segments": s.segments})).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("{} ({})", config.name, kind_name(config.kind));
    println!("  durability      {}", config.durability);
    println!(
        "  key routing     {}",
        match config.key_routing {
            felix_client::wire::KeyRouting::Slots => "slots (Redis Cluster hash slots)",
            felix_client::wire::KeyRouting::Fnv1a => "fnv1a",
        }
    );
    if config.replication_factor > 0 {
        println!("  replication     {}", config.replication_factor);
    }
    println!("  retention       {}", fmt_opt_ms(config.retention_ms));
    println!(
        "  retention bytes {}",
        config
            .retention_bytes
            .map_or("unbounded".into(), |b| b.to_string())
    );
    println!("  max deliveries  {}", config.max_deliveries);
    if let Some(t) = config.default_ttl_ms {
        println!("  default ttl     {}", fmt_opt_ms(Some(t)));
    }
    println!("  shard  earliest  next  bytes  segments");
    for s in shards {
        println!(
            "  {:>5}  {:>8}  {:>4}  {:>5}  {:>8}",
            s.shard, s.earliest, s.next, s.bytes, s.segments
        );
    }
}

fn report(c: &Common, j: serde_json::Value, t: impl FnOnce() -> String) {
    match c.output {
        Output::Json => print_json(j),
        Output::Text => println!("{}", t()),
    }
}

pub async fn cache(c: &Common, cmd: CacheCommand) -> anyhow::Result<()> {
    let client = connect(c).await?;
    match cmd {
        CacheCommand::Create {
            name,
            layout:
                Layout {
                    shards,
                    durability,
                    replication_factor,
                },
            ttl,
        } => {
            let cfg = StreamConfig {
                name: name.clone(),
                kind: StreamKind::Cache,
                shards,
                durability,
                retention_ms: None,
                retention_bytes: None,
                max_deliveries: 5,
                default_ttl_ms: ttl,
                replication_factor: replication_factor.unwrap_or(0),
                key_routing: felix_client::wire::KeyRouting::FOR_NEW,
            };
            admin(&client, Message::StreamCreate(cfg)).await?;
            report(c, json!({"created": name, "shards": shards}), || {
                format!("created cache {name}")
            });
        }
        CacheCommand::Put {
            name,
            key,
            value,
            ttl,
            if_version,
        } => {
            let cache = client.cache(&name);
            let out = match if_version {
                None => felix_client::CasOutcome::Written(cache.put(key.clone(), value, ttl).await?),
                Some(v) => cache.put_if_version(key.clone(), value, ttl, v).await?,
            };
            written(c, &key, out)?;
        }
        CacheCommand::Get { name, key } => {
            let e = client.cache(&name).get(key.clone()).await?;
            match e {
                Some(e) => {
                    let (v, b64) = bytes_json(&e.value);
                    let mut j =
                        json!({"key": key, "value": v, "version": e.version, "expiry_ms": e.expiry_ms});
                    if b64 {
                        j["encoding"] = json!("base64");
                    }
                    report(c, j, || format!("{}\t(version {})", text(&e.value), e.version));
                }
                None => {
                    report(c, json!({"key": key, "value": null}), || {
                        format!("{key}: not found")
                    });
                    std::process::exit(3);
                }
            }
        }
        CacheCommand::Del {
            name,
            key,
            if_version,
        } => {
            let out = client.cache(&name).delete(key.clone(), if_version).await?;
            written(c, &key, out)?;
        }
    }
    client.close().await;
    Ok(())
}

fn written(c: &Common, key: &str, out: felix_client::CasOutcome) -> anyhow::Result<()> {
    match out {
        felix_client::CasOutcome::Written(v) => {
            report(c, json!({"key": key, "version": v}), || {
                format!("{key}: version {v}")
            });
            Ok(())
        }
        felix_client::CasOutcome::Conflict(e) => {
            let have = e.map(|e| e.version).unwrap_or(0);
            bail!("{key}: version mismatch; the key is at version {have} (0 = absent); nothing written")
        }
    }
}

/// The key file `--value-keys` names, if any.
fn value_keys(
    path: Option<&std::path::Path>,
) -> anyhow::Result<Option<std::sync::Arc<felix_client::ValueKeys>>> {
    Ok(path
        .map(felix_client::ValueKeys::load)
        .transpose()?
        .map(std::sync::Arc::new))
}

pub async fn publish(c: &Common, a: PublishArgs) -> anyhow::Result<()> {
    let client = connect(c).await?;
    let seal = value_keys(a.value_keys.as_deref())?;
    let producer = client
        .producer(
            &a.stream,
            felix_client::ProducerConfig {
                seal,
                ..felix_client::ProducerConfig::default()
            },
        )
        .await?;
    let (input, size): (Box<dyn BufRead>, Option<u64>) = match &a.file {
        Some(f) => {
            let file = std::fs::File::open(f).with_context(|| format!("--file {}", f.display()))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(std::io::BufReader::new(file)), size)
        }
        None => (Box::new(std::io::BufReader::new(std::io::stdin())), None),
    };
    let bar = a
        .file
        .is_some()
        .then(|| crate::progress::bar(size, true, &format!("publishing to {}", a.stream)));
    let mut pending = std::collections::VecDeque::new();
    let mut summary = Summary::default();
    let mut print = |ack: felix_client::RecordAck| {
        summary.add(ack.shard, ack.offset);
        if !a.quiet {
            report(c, json!({"shard": ack.shard, "offset": ack.offset}), || {
                format!("shard {} offset {}", ack.shard, ack.offset)
            });
        }
    };
    for line in input.lines() {
        let line = line.context("reading input")?;
        if let Some(b) = &bar {
            b.inc(line.len() as u64 + 1);
        }
        let mut r = match &a.key {
            Some(k) => felix_client::ProducerRecord::keyed(k.clone(), line),
            None => felix_client::ProducerRecord::new(line),
        };
        r.shard = a.shard;
        pending.push_back(producer.send(r).await?);
        // Keep acks in order and memory bounded.
        while pending.len() > 1024 {
            let ack = pending
                .pop_front()
                .expect("non-empty")
                .wait()
                .await
                .map_err(|e| anyhow!("{e}"))?;
            print(ack);
        }
    }
    producer.flush().await?;
    for p in pending {
        print(p.wait().await.map_err(|e| anyhow!("{e}"))?);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.quiet {
        summary.report(c);
    }
    producer.close().await?;
    client.close().await;
    Ok(())
}

/// What a quiet publish prints at the end: records acknowledged, and the
/// offsets they took per shard.
#[derive(Default)]
struct Summary {
    records: u64,
    shards: std::collections::BTreeMap<u32, (u64, u64)>,
}

impl Summary {
    fn add(&mut self, shard: u32, offset: u64) {
        self.records += 1;
        let e = self.shards.entry(shard).or_insert((offset, offset));
        e.0 = e.0.min(offset);
        e.1 = e.1.max(offset);
    }

    fn report(&self, c: &Common) {
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .map(|(s, (lo, hi))| json!({"shard": s, "first": lo, "last": hi}))
            .collect();
        report(c, json!({"records": self.records, "shards": shards}), || {
            let per: Vec<String> = self
                .shards
                .iter()
                .map(|(s, (lo, hi))| format!("shard {s} offsets {lo}..={hi}"))
                .collect();
            format!("{} record(s) acknowledged: {}", self.records, per.join(", "))
        });
    }
}

pub async fn subscribe(c: &Common, a: SubscribeArgs) -> anyhow::Result<()> {
    let client = connect(c).await?;
    let mut start = parse_start(&a.from)?;
    if a.name.is_some() && a.from == "latest" {
        // A named subscription resumes where it left off unless told otherwise.
        start = Start::Committed;
    }
    let open = value_keys(a.value_keys.as_deref())?;
    let opts = SubscribeOptions {
        shards: a.shard.into_iter().collect(),
        start,
        durable: a.name.clone(),
        open,
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe(&a.stream, opts).await?;
    let mut seen = 0u64;
    let mut out: Box<dyn Write> = match &a.to {
        Some(f) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(f).with_context(|| format!("--to {}", f.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let bar =
        a.to.is_some()
            .then(|| crate::progress::bar(a.count, false, &format!("replaying {}", a.stream)));
    while a.count.is_none_or(|n| seen < n) {
        let Some(d) = sub.next().await else { break };
        let d = d?;
        let r = &d.record;
        let value = r.value.as_deref().unwrap_or_default();
        {
            match c.output {
                Output::Json => {
                    let headers: serde_json::Map<String, serde_json::Value> = r
                        .headers
                        .iter()
                        .map(|(k, v)| (text(k), bytes_json(v).0))
                        .collect();
                    let extra = if headers.is_empty() {
                        json!({})
                    } else {
                        json!({ "headers": headers })
                    };
                    writeln!(
                        out,
                        "{}",
                        record_json(
                            d.shard,
                            r.offset.0,
                            r.key.as_deref(),
                            value,
                            r.timestamp_ms,
                            extra
                        )
                    )?
                }
                Output::Text => writeln!(out, "{}\t{}\t{}", d.shard, r.offset.0, text(value))?,
            }
        }
        if a.name.is_some() {
            sub.commit(d.shard, r.offset.0 + 1).await?;
        }
        seen += 1;
        if let Some(b) = &bar {
            b.inc(1);
        }
        if a.to.is_none() {
            out.flush()?;
        }
    }
    out.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(sub);
    client.close().await;
    Ok(())
}

pub async fn group(c: &Common, cmd: GroupCommand) -> anyhow::Result<()> {
    let client = connect(c).await?;
    let GroupCommand::Consume {
        stream,
        group,
        count,
        lease,
        no_ack,
    } = cmd;
    let consumer = client.group_consumer(&stream, &group);
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let want = count.map_or(100, |n| (n - seen).min(100)) as u32;
        let got = consumer
            .fetch(want, lease.min(u64::from(u32::MAX)) as u32)
            .await?;
        if got.records.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut items = Vec::with_capacity(got.records.len());
        for r in &got.records {
            match c.output {
                Output::Json => print_json(record_json(
                    r.shard,
                    r.offset,
                    r.key.as_deref(),
                    &r.value,
                    r.timestamp_ms,
                    json!({"deliveries": r.deliveries}),
                )),
                Output::Text => println!(
                    "{}\t{}\t{}\t(delivery {})",
                    r.shard,
                    r.offset,
                    text(&r.value),
                    r.deliveries
                ),
            }
            items.push((r.shard, r.offset));
        }
        if !no_ack {
            consumer.ack(&items).await?;
        }
        seen += items.len() as u64;
    }
    client.close().await;
    Ok(())
}
