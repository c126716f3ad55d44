//! `felix`: the one command a user runs.

mod bench;
mod cli;
mod devcluster;
mod logs;
mod logtool;
mod progress;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use felix_broker::config::BrokerConfig;
use felix_broker::node::{skewed_clock, system_clock};
use felix_broker::server::{self, ClientProfile};

#[derive(Parser)]
#[command(
    name = "felix",
    version,
    about = "Felix: a durable, replicated message log and cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: cli::Common,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on this machine: a broker with embedded
    /// defaults, development certificates and a client profile.
    Dev {
        #[arg(long, default_value = "./felix-data")]
        data_dir: PathBuf,
        /// QUIC address to listen on (port 0 picks a free one). With
        /// --brokers N, brokers listen on N consecutive ports from it and
        /// replicate on the N ports 100 above.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Run a local cluster of this many broker processes that replicate
        /// every shard to each other (1: one broker in this process).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
        brokers: u32,
        /// HTTP address of the embedded control plane (default: the port
        /// after --listen's, 200 after it with --brokers N, or a free one
        /// when --listen's is 0).
        #[arg(long)]
        controlplane_listen: Option<SocketAddr>,
    },
    /// A broker configured by a TOML file.
    Broker {
        #[arg(long)]
        config: PathBuf,
    },
    /// A control-plane node configured by a TOML file (`docs/controlplane.md`).
    Controlplane {
        #[arg(long)]
        config: PathBuf,
    },
    /// Streams: create, list, describe, delete, set-retention.
    #[command(subcommand)]
    Stream(cli::StreamCommand),
    /// Caches: create, put, get, del.
    #[command(subcommand)]
    Cache(cli::CacheCommand),
    /// Publish one record per line of stdin (or --file); prints shard and offset.
    Publish(cli::PublishArgs),
    /// Print a stream's records, from a position, then live.
    Subscribe(cli::SubscribeArgs),
    /// Consumer groups.
    #[command(subcommand)]
    Group(cli::GroupCommand),
    /// Inspect and recover a shard's segment log directory.
    #[command(subcommand)]
    Log(logtool::LogCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The cluster as its brokers report it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Configuration files: check one, print the documented schema.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (e.g. `felix completions bash >
    /// /etc/bash_completion.d/felix`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Brokers (up or down, leaderships), and every shard's leader,
    /// replicas, end offset and per-replica lag; flags under-replicated
    /// shards and shards without a leader.
    Status {
        /// A replica further behind than this many records counts as out
        /// of sync.
        #[arg(long, default_value_t = 1_000)]
        lag_max: u64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a broker or control-plane file, with the FELIX_* variables
    /// set now, without starting anything.
    Check {
        file: PathBuf,
        /// Which kind of file (default: a control-plane node's when it has
        /// `cluster_secret`, else a broker's).
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Print docs/configuration.md: every key, its type and default.
    Docs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Role {
    Broker,
    Controlplane,
}

fn main() -> anyhow::Result<()> {
    logs::init();
    let args = Cli::parse();
    let common = args.common;
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    };
    match args.command {
        Command::Dev {
            data_dir,
            listen,
            brokers,
            controlplane_listen,
        } if brokers > 1 => {
            // Past the brokers' client and replication ports.
            let cp = controlplane_listen.unwrap_or_else(|| {
                let port = match listen.port() {
                    0 => 0,
                    p => p.saturating_add(200),
                };
                SocketAddr::new(listen.ip(), port)
            });
            rt()?.block_on(devcluster::run(&data_dir, listen, brokers, cp))
        }
        Command::Dev {
            data_dir,
            listen,
            controlplane_listen,
            ..
        } => {
            // The control plane on the port after the broker's, the admin
            // endpoints on the one after that (free ones with port 0).
            let next = |k: u16| {
                let port = match listen.port() {
                    0 => 0,
                    p => p.wrapping_add(k),
                };
                SocketAddr::new(listen.ip(), port)
            };
            let config = BrokerConfig {
                data_dir,
                listen,
                admin_listen: Some(next(2)),
                ..BrokerConfig::default()
            };
            let cp = controlplane_listen.unwrap_or_else(|| next(1));
            rt()?.block_on(serve(config, None, Some(cp)))
        }
        Command::Broker { config: path } => {
            let c = BrokerConfig::load(&path)?;
            logs::set_level(c.log_level.as_deref());
            rt()?.block_on(serve(c, Some(path), None))
        }
        Command::Controlplane { config: path } => {
            let c = felix_broker::config::load_controlplane(&path)?;
            logs::set_level(c.log_level.as_deref());
            rt()?.block_on(controlplane(c, path))
        }
        Command::Cluster(ClusterCommand::Status { lag_max }) => rt()?
            .block_on(status::cluster_status(&common, lag_max))
            .map_err(cli::with_hint),
        Command::Config(ConfigCommand::Docs) => {
            print!("{}", felix_broker::config::schema::markdown());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file, role }) => config_check(&file, role),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "felix", &mut std::io::stdout());
            Ok(())
        }
        Command::Stream(c) => rt()?.block_on(cli::stream(&common, c)).map_err(cli::with_hint),
        Command::Cache(c) => rt()?.block_on(cli::cache(&common, c)).map_err(cli::with_hint),
        Command::Publish(a) => rt()?.block_on(cli::publish(&common, a)).map_err(cli::with_hint),
        Command::Subscribe(a) => rt()?.block_on(cli::subscribe(&common, a)).map_err(cli::with_hint),
        Command::Group(c) => rt()?.block_on(cli::group(&common, c)).map_err(cli::with_hint),
        Command::Log(c) => logtool::run(c),
        Command::Bench(c) => bench::run(c),
    }
}

/// `felix config check`: the file with the environment over it, checked as
/// the process would at start.
fn config_check(file: &Path, role: Option<Role>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let role = role.unwrap_or(if BrokerConfig::is_controlplane_file(&text) {
        Role::Controlplane
    } else {
        Role::Broker
    });
    let verdict = match role {
        Role::Broker => BrokerConfig::parse(&text, std::env::vars()).map(|_| "broker"),
        Role::Controlplane => {
            felix_broker::config::parse_controlplane(&text, std::env::vars()).map(|_| "control-plane")
        }
    };
    match verdict {
        Ok(kind) => {
            println!("{}: a valid {kind} configuration", file.display());
            Ok(())
        }
        Err(why) => Err(anyhow::anyhow!(
            "{}: {why}\n(every key and its default: docs/configuration.md, or `felix config docs`)",
            file.display()
        )),
    }
}

/// Runs a broker until SIGINT or SIGTERM; SIGHUP reads `file` again and
/// applies its reloadable keys. `dev` (the embedded control plane's
/// address) also starts the control plane, writes the client profile and
/// prints how to reach both.
async fn serve(
    mut config: BrokerConfig,
    file: Option<PathBuf>,
    dev: Option<SocketAddr>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    config.data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", config.data_dir.display()))?;
    let embedded = match dev {
        Some(listen) => {
            let e = felix_broker::control::embedded::start(&config.data_dir, listen)
                .await
                .with_context(|| format!("starting the embedded control plane on {listen}"))?;
            config.controlplane = Some(e.link.clone());
            Some(e)
        }
        None => None,
    };
    // The fault-injection suite skews a broker's clock through a file.
    let clock =
        std::env::var_os("FELIX_CLOCK_SKEW_FILE").map_or_else(system_clock, |p| skewed_clock(p.into()));
    let running = server::start(&config, clock).await.with_context(|| {
        format!(
            "starting the broker on {} with data in {}",
            config.listen,
            config.data_dir.display()
        )
    })?;
    let profile_path = config.data_dir.join("client.toml");
    if let Some(ca) = &running.dev_ca {
        let p = ClientProfile {
            brokers: vec![running.addr.to_string()],
            server_name: "localhost".into(),
            ca: ca.clone(),
            cert: None,
            key: None,
            token: embedded.as_ref().map(|e| e.dev_token.clone()),
            controlplane: embedded.as_ref().map(|e| format!("http://{}", e.handle.addr)),
            admin: running.admin_addr.iter().map(|a| format!("http://{a}")).collect(),
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
async fn controlplane(c: felix_controlplane::node::NodeConfig, file: PathBuf) -> anyhow::Result<()> {
    let id = c.id;
    let h = felix_controlplane::server::start(c)
        .await
        .context("starting the control plane")?;
    println!("felix controlplane {id} listening on http://{}", h.addr);
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

/// Longest a broker spends stopping after SIGTERM.
const SHUTDOWN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

fn print_dev_banner(
    r: &server::Running,
    e: &felix_broker::control::embedded::Embedded,
    dir: &Path,
    profile: &Path,
) {
    println!("felix dev is running");
    println!("  endpoint  quic://{}", r.addr);
    println!(
        "  control   http://{}  (operator secret in {})",
        e.handle.addr,
        dir.join(felix_broker::control::embedded::DIR)
            .join("secret")
            .display()
    );
    println!("  tenant    dev (namespace default; bare names like `orders` are dev/default/orders)");
    println!("  token     {}", e.dev_token);
    if let Some(a) = r.admin_addr {
        println!("  admin     http://{a}/metrics  /live  /ready");
    }
    if let Some(ca) = &r.dev_ca {
        println!("  CA        {}", ca.display());
    }
    println!("  profile   {}", profile.display());
    println!("  data      {}", dir.display());
    println!("try: felix stream create orders --shards 3   (Ctrl-C stops)");
}

pub(crate) async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
