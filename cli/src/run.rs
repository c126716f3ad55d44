//! Running a broker or a control-plane node in this process until a
//! signal stops it: what `felix broker`, `felix controlplane`, `felix dev`
//! and the benchmarks' broker processes share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use felix_broker::config::BrokerConfig;
use felix_broker::node::{skewed_clock, system_clock};
use felix_broker::server::{self, ClientProfile};

use crate::logs;

/// `felix broker --config FILE`: the file's broker, on a runtime of its
/// own, until SIGINT or SIGTERM.
pub fn broker_from_file(path: PathBuf) -> anyhow::Result<()> {
    let c = BrokerConfig::load(&path)?;
    logs::set_level(c.log_level.as_deref());
    runtime()?.block_on(serve(c, Some(path), None))
}

/// `felix broker --config FILE --controlplane-config CP_FILE`: a broker and
/// a control-plane node in one process (as KRaft's combined mode), so a
/// small cluster needs no machines of its own for its control plane. The
/// node starts first, so the broker's registration finds it; it stops
/// after the broker has handed its leaderships over.
pub fn combined_from_files(broker: PathBuf, cp: PathBuf) -> anyhow::Result<()> {
    let c = BrokerConfig::load(&broker)?;
    let node = felix_broker::config::load_controlplane(&cp)
        .with_context(|| format!("reading the control-plane node's {}", cp.display()))?;
    if c.controlplane.is_none() {
        anyhow::bail!(
            "{}: a combined broker needs [controlplane] naming the control-plane nodes (this one too)",
            broker.display()
        );
    }
    logs::set_level(c.log_level.as_deref());
    runtime()?.block_on(async move {
        let id = node.id;
        let h = felix_controlplane::server::start(node)
            .await
            .context("starting the control-plane node")?;
        println!("felix controlplane {id} listening on {}", h.url());
        let served = serve(c, Some(broker), None).await;
        h.shutdown().await;
        served
    })
}

/// Files a shard replica holds open: its active segment (the data
/// directory's one lock stands for every log's).
const FILES_PER_REPLICA: u64 = 1;

/// Takes the open-file limit up to what the system allows this process (as
/// Kafka and Redpanda ask operators to): every replica holds files, and a
/// broker of thousands of replicas passes the usual soft limit of 1,024.
/// Past the hard limit, opening a shard fails with "Too many open files",
/// which the log names.
fn raise_open_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `l`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return;
    }
    if l.rlim_cur < l.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: l.rlim_max,
            rlim_max: l.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            l = raised;
        }
    }
    tracing::info!(
        open_files_max = l.rlim_cur,
        replicas_max = l.rlim_cur / FILES_PER_REPLICA,
        "open-file limit (each shard replica holds {FILES_PER_REPLICA}; raise the hard limit for more)"
    );
}

/// The multi-threaded runtime every command runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs a broker until SIGINT or SIGTERM; SIGHUP reads `file` again and
/// applies its reloadable keys. `dev` (the embedded control plane's
/// address) also starts the control plane, writes the client profile and
/// prints how to reach both.
pub async fn serve(
    mut config: BrokerConfig,
    file: Option<PathBuf>,
    dev: Option<SocketAddr>,
) -> anyhow::Result<()> {
    raise_open_files();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    config.data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", config.data_dir.display()))?;
    let embedded = match dev {
        Some(listen) => {
            // The broker's development CA is made (or found) under its
            // data directory; the control plane's certificate comes from it.
            let e = crate::embedded::start(&config.data_dir, listen, &config.data_dir)
                .await
                .with_context(|| format!("starting the embedded control plane on {listen}"))?;
            config.controlplane = Some(e.link.clone());
            Some(e)
        }
        None => None,
    };
    let clock = clock()?;
    let running = server::start(&config, clock).await.with_context(|| {
        format!(
            "starting the broker on {} with data in {}",
            config.listen,
            config.data_dir.display()
        )
    })?;
    // Before the profile is written: a test (or script) that waits for
    // the profile finds the cache there.
    if let (Some(e), Some(r)) = (&embedded, &config.redis) {
        dev_cache(&running.node, &e.dev_token, &r.cache)
            .await
            .with_context(|| format!("creating the Redis door's cache {}", r.cache))?;
    }
    let profile_path = config.data_dir.join("client.toml");
    if let Some(ca) = &running.dev_ca {
        let p = ClientProfile {
            brokers: vec![running.addr.to_string()],
            server_name: "localhost".into(),
            ca: ca.clone(),
            cert: None,
            key: None,
            token: embedded.as_ref().map(|e| e.dev_token.clone()),
            controlplane: embedded.as_ref().map(|e| e.handle.url()),
            controlplane_ca: embedded.as_ref().and_then(|e| e.link.ca.clone()),
            admin: running.admin_addr.iter().map(|a| format!("http://{a}")).collect(),
            redis: running.redis_addr.map(|a| a.to_string()),
            kafka: running.kafka_addr.map(|a| a.to_string()),
        };
        p.save(&profile_path)?;
    }
    if let Some(e) = &embedded {
        print_dev_banner(&running, e, &config.data_dir, &profile_path);
    } else {
        println!("felix broker {} listening on {}", config.broker_id, running.addr);
    }
    let mut hangup = hangups();
    loop {
        tokio::select! {
            _ = wait_for_shutdown() => break,
            _ = hangup.recv() => match &file {
                Some(f) => reload(&config, f, &running.node),
                None => tracing::warn!("SIGHUP: this broker has no configuration file to read again"),
            },
        }
    }
    eprintln!("shutting down");
    // A group stuck on a peer that is gone must not keep the process alive
    // (SIGTERM has to end it, e.g. when `felix dev` stops its brokers);
    // what is acknowledged is already durable, so a cut-short stop loses
    // nothing.
    tokio::select! {
        _ = running.stop() => {}
        _ = tokio::time::sleep(SHUTDOWN_WAIT_MAX) => {
            eprintln!("shutdown took over {SHUTDOWN_WAIT_MAX:?}; exiting without waiting further");
        }
        _ = wait_for_shutdown() => eprintln!("second signal: exiting now"),
    }
    if let Some(e) = embedded {
        e.handle.shutdown().await;
    }
    Ok(())
}

/// Longest `felix dev` waits for the Redis door's cache to be served.
const DEV_CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `felix dev`: the Redis door's cache, made (4 shards, `always`) when the
/// development tenant has none, so `redis-cli` works at once.
async fn dev_cache(
    node: &std::sync::Arc<felix_broker::node::Node>,
    token: &str,
    name: &str,
) -> anyhow::Result<()> {
    use felix_client::server::{Handler, HelloRequest, Peer, Reply};
    use felix_client::wire::{Message, StreamConfig, StreamKind};
    let h = felix_broker::handler::NodeHandler { node: node.clone() };
    let peer = Peer {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        has_certificate: false,
    };
    let hello = HelloRequest {
        version: u16::from(felix_client::wire::frame::VERSION),
        capabilities: 0,
        token: token.as_bytes().to_vec().into(),
    };
    let (session, _) = h.hello(&peer, hello).await?;
    let describe = || Message::StreamDescribe {
        name: name.to_owned(),
    };
    let deadline = std::time::Instant::now() + DEV_CACHE_WAIT;
    let mut created = false;
    loop {
        match h.request(&session, describe()).await {
            Reply::Message(Message::StreamDescription { .. }) => return Ok(()),
            Reply::Message(Message::Error(felix_client::wire::ErrorReply::UnknownStream(_))) if !created => {
                let mut c = StreamConfig::stream(name, 4, felix_client::wire::Durability::Always);
                c.kind = StreamKind::Cache;
                match h.request(&session, Message::StreamCreate(c)).await {
                    Reply::Message(Message::Done) => created = true,
                    // Just restarted, the embedded control plane may not
                    // have replayed its log nor seen this broker's
                    // heartbeat: it answers "unknown" and refuses to
                    // place. Ask again until the deadline.
                    other if std::time::Instant::now() > deadline => {
                        anyhow::bail!("not created within {DEV_CACHE_WAIT:?}: {other:?}")
                    }
                    _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
            other if std::time::Instant::now() > deadline => {
                anyhow::bail!("not served within {DEV_CACHE_WAIT:?}: {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Applies what SIGHUP may change from `file`, leaving the rest as it runs.
fn reload(running: &BrokerConfig, file: &Path, node: &felix_broker::node::Node) {
    let next = match BrokerConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the configuration is refused; the running settings stay");
            metrics::counter!(felix_broker::observe::metrics::CONFIG_RELOADS_TOTAL, "outcome" => "refused")
                .increment(1);
            return;
        }
    };
    let fixed = running.restart_needed(&next);
    if !fixed.is_empty() {
        tracing::warn!(keys = ?fixed, "SIGHUP: these keys changed and apply only after a restart");
    }
    logs::set_level(next.log_level.as_deref());
    node.apply_reloadable(&next.reloadable());
    tracing::info!(file = %file.display(), "SIGHUP: configuration reloaded");
    metrics::counter!(felix_broker::observe::metrics::CONFIG_RELOADS_TOTAL, "outcome" => "applied")
        .increment(1);
}

fn hangups() -> tokio::signal::unix::Signal {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).expect("installing a SIGHUP handler")
}

/// Runs a control-plane node until SIGINT or SIGTERM; SIGHUP applies the
/// file's `log_level` again.
pub async fn controlplane(c: felix_controlplane::node::NodeConfig, file: PathBuf) -> anyhow::Result<()> {
    let id = c.id;
    let h = felix_controlplane::server::start(c)
        .await
        .context("starting the control plane")?;
    println!("felix controlplane {id} listening on {}", h.url());
    if let Some(b) = h.bootstrap_addr {
        println!("  bootstrap endpoint on http://{b}");
    }
    let mut hangup = hangups();
    loop {
        tokio::select! {
            _ = wait_for_shutdown() => break,
            _ = hangup.recv() => match felix_broker::config::load_controlplane(&file) {
                Ok(next) => {
                    logs::set_level(next.log_level.as_deref());
                    tracing::info!("SIGHUP: log level reloaded; other control-plane keys apply after a restart");
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: the configuration is refused"),
            },
        }
    }
    h.shutdown().await;
    Ok(())
}

/// Longest a broker spends stopping after SIGTERM: room for the hand-over
/// of every leadership and the drain of in-flight writes, within the usual
/// termination grace period of 30 s (Kubernetes' default).
const SHUTDOWN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(27);
const _: () = assert!(
    SHUTDOWN_WAIT_MAX.as_millis()
        > (felix_broker::node::STEP_DOWNS_MS_MAX as u128) + felix_broker::server::IN_FLIGHT_WAIT.as_millis()
);

fn print_dev_banner(r: &server::Running, e: &crate::embedded::Embedded, dir: &Path, profile: &Path) {
    println!("felix dev is running");
    println!("  endpoint  quic://{}", r.addr);
    println!(
        "  control   http://{}  (operator secret in {})",
        e.handle.addr,
        dir.join(crate::embedded::DIR).join("secret").display()
    );
    println!("  tenant    dev (namespace default; bare names like `orders` are dev/default/orders)");
    println!("  token     {}", e.dev_token);
    if let Some(a) = r.admin_addr {
        println!("  admin     http://{a}/metrics  /live  /ready");
    }
    if let Some(a) = r.redis_addr {
        println!(
            "  redis     redis-cli -p {} --user dev --pass <token>   (cache `redis`; docs/redis.md)",
            a.port()
        );
    }
    if let Some(a) = r.kafka_addr {
        println!(
            "  kafka     kcat -b {a} -X security.protocol=SASL_PLAINTEXT -X sasl.mechanism=PLAIN -X sasl.username=dev -X sasl.password=<token> -L   (docs/kafka.md)"
        );
    }
    if let Some(ca) = &r.dev_ca {
        println!("  CA        {}", ca.display());
    }
    println!("  profile   {}", profile.display());
    println!("  data      {}", dir.display());
    println!("try: felix stream create orders --shards 3   (Ctrl-C stops)");
}

pub async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The broker's clock. The fault-injection suite skews a broker's clock
/// through a file; that hook exists in debug builds only, so a release
/// binary's clock cannot be moved by an environment variable.
fn clock() -> anyhow::Result<felix_broker::node::Clock> {
    let skew = std::env::var_os("FELIX_CLOCK_SKEW_FILE");
    if cfg!(debug_assertions) {
        return Ok(skew.map_or_else(system_clock, |p| skewed_clock(p.into())));
    }
    anyhow::ensure!(
        skew.is_none(),
        "FELIX_CLOCK_SKEW_FILE is a test hook of debug builds; this is a release build"
    );
    Ok(system_clock())
}
