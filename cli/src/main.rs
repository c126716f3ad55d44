//! `felix`: the one command a user runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use felix_broker::config::BrokerConfig;
use felix_cli::profile::{with_hint, Common};
use felix_cli::run::{controlplane, runtime, serve};
use felix_cli::{commands, devcluster, logs, logtool, status};

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
    common: Common,
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
        /// Also run a control-plane node from this file in the same
        /// process (combined mode: three machines, three processes). The
        /// broker's `[controlplane].urls` lists every node, this one too.
        #[arg(long)]
        controlplane_config: Option<PathBuf>,
    },
    /// A control-plane node configured by a TOML file (every key in
    /// `docs/configuration.md`).
    Controlplane {
        #[arg(long)]
        config: PathBuf,
    },
    /// Streams: create, list, describe, delete, set-retention.
    #[command(subcommand)]
    Stream(commands::StreamCommand),
    /// Caches: create, put, get, del.
    #[command(subcommand)]
    Cache(commands::CacheCommand),
    /// Publish one record per line of stdin (or --file); prints shard and offset.
    Publish(commands::PublishArgs),
    /// Print a stream's records, from a position, then live.
    Subscribe(commands::SubscribeArgs),
    /// Consumer groups.
    #[command(subcommand)]
    Group(commands::GroupCommand),
    /// Inspect and recover a shard's segment log directory.
    #[command(subcommand)]
    Log(logtool::LogCommand),
    /// The cluster as its brokers report it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// One shard of a stream or cache.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Bridges: a tenant's streams carried to another region's cluster.
    /// Talks to the control plane.
    #[command(subcommand)]
    Bridge(felix_cli::bridge::BridgeCommand),
    /// Configuration files: check one, print the documented schema.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Development certificates: a CA, one replication certificate per
    /// broker and serving certificates for control-plane nodes, signed by
    /// it.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// End-to-end value encryption keys (`docs/format/sealed.md`).
    #[command(subcommand, name = "value-key")]
    ValueKey(ValueKeyCommand),
    /// Encryption at rest: brokers' master keys (`docs/security.md`).
    #[command(subcommand, name = "master-key")]
    MasterKey(MasterKeyCommand),
    /// Print a shell completion script (e.g. `felix completions bash >
    /// /etc/bash_completion.d/felix`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ValueKeyCommand {
    /// Adds a fresh key to FILE (made with mode 0600 if missing): it seals
    /// from now on; the older keys in FILE still open what they sealed.
    /// Give FILE to producers (`felix publish --value-keys`) and readers
    /// (`felix subscribe --value-keys`), never to a broker.
    New { file: PathBuf },
}

#[derive(Subcommand)]
enum MasterKeyCommand {
    /// Writes a new master key to FILE (mode 0600; an existing FILE is
    /// never overwritten). Every broker of the cluster gets the same FILE
    /// as `[encryption] master_key_file`; tenants name its ID in their
    /// `encryption.key_id`.
    New {
        file: PathBuf,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Issue broker BROKER its replication certificate (`broker.pem`,
    /// `broker.key`) under --out, signed by the development CA under
    /// --ca-dir (made there if missing). Hand the broker the two files and
    /// `<ca-dir>/tls/ca.pem`, never `ca.key`. The certificate names the
    /// broker's region (--region, the broker's `region`).
    Broker {
        broker: u64,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = felix_client::transport::identity::REGION_DEFAULT)]
        region: String,
    },
    /// Issue a control-plane node its serving certificate
    /// (`controlplane.pem`, `controlplane.key`) under --out for
    /// `localhost`, `127.0.0.1` and every --name (the hosts its peers and
    /// brokers reach it under), signed by the development CA under
    /// --ca-dir. Prints the node's [tls] table.
    Controlplane {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// A host name or IP address the node is reached under.
        #[arg(long = "name")]
        names: Vec<String>,
    },
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
    /// Move every replica and leadership off a broker, then drop it from
    /// the registry (its id is never reused); stop it after. Talks to the
    /// control plane.
    Decommission {
        broker: u32,
        /// Report progress until it is over.
        #[arg(long)]
        wait: bool,
    },
    /// Move replicas until every broker carries an even share (replica
    /// and leader counts within one), a few moves at a time; a broker
    /// that joins starts one by itself. Talks to the control plane.
    Rebalance {
        /// `balanced` spreads each stream evenly, then the totals;
        /// `minimize-movement` evens the totals with the fewest moves.
        #[arg(long, value_parser = ["balanced", "minimize-movement"], default_value = "balanced")]
        strategy: String,
        /// Only this stream or cache (`tenant/namespace/name`).
        #[arg(long)]
        stream: Option<String>,
        /// Report progress until it is over.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum ShardCommand {
    /// Move a shard's leadership to another of its replicas (kept there
    /// against leader balancing). Talks to the control plane.
    Transfer {
        /// tenant/namespace/name
        stream: String,
        shard: u32,
        /// The broker to lead it (one holding a replica).
        #[arg(long)]
        to: u32,
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

/// An error ends the command with its message and hint (every cause on
/// one line each) and exit code 1; never a backtrace, whatever
/// `RUST_BACKTRACE` says: the messages are written for users.
fn main() -> ExitCode {
    logs::init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, laid out as `anyhow` prints them, without the
/// backtrace it would add.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        out.push_str("\n\nCaused by:");
        for (i, c) in causes.iter().enumerate() {
            let c = c.replace('\n', "\n       ");
            match causes.len() {
                1 => out.push_str(&format!("\n    {c}")),
                _ => out.push_str(&format!("\n    {i}: {c}")),
            }
        }
    }
    out
}

fn run(args: Cli) -> anyhow::Result<()> {
    let common = args.common;
    let rt = runtime;
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
                listen,
                admin_listen: Some(next(2)),
                redis: Some(felix_broker::config::RedisConfig::on(next(3))),
                // Topics a client names come into being, as with Kafka's
                // own defaults (one partition).
                kafka: Some(felix_broker::config::KafkaConfig {
                    auto_create_partitions: 1,
                    ..felix_broker::config::KafkaConfig::on(next(4))
                }),
                // A master key of its own, made on first start, so a
                // tenant can turn encryption at rest on (`dev-master`).
                encryption: Some(felix_broker::at_rest::dev_master_key(&data_dir)?),
                data_dir,
                ..BrokerConfig::default()
            };
            let cp = controlplane_listen.unwrap_or_else(|| next(1));
            rt()?.block_on(serve(config, None, Some(cp)))
        }
        Command::Broker {
            config: path,
            controlplane_config: None,
        } => felix_cli::run::broker_from_file(path),
        Command::Broker {
            config: path,
            controlplane_config: Some(cp),
        } => felix_cli::run::combined_from_files(path, cp),
        Command::Controlplane { config: path } => {
            let c = felix_broker::config::load_controlplane(&path)?;
            logs::set_level(c.log_level.as_deref());
            rt()?.block_on(controlplane(c, path))
        }
        Command::Cluster(ClusterCommand::Status { lag_max }) => rt()?
            .block_on(status::cluster_status(&common, lag_max))
            .map_err(with_hint),
        Command::Shard(ShardCommand::Transfer { stream, shard, to }) => {
            rt()?.block_on(felix_cli::operator::transfer(&common, &stream, shard, to))
        }
        Command::Bridge(c) => rt()?.block_on(felix_cli::bridge::run(&common, c)),
        Command::Cluster(ClusterCommand::Decommission { broker, wait }) => {
            rt()?.block_on(felix_cli::operator::decommission(&common, broker, wait))
        }
        Command::Cluster(ClusterCommand::Rebalance {
            strategy,
            stream,
            wait,
        }) => rt()?.block_on(felix_cli::operator::rebalance(
            &common,
            &strategy.replace('-', "_"),
            stream,
            wait,
        )),
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
        Command::Stream(c) => rt()?.block_on(commands::stream(&common, c)).map_err(with_hint),
        Command::Cache(c) => rt()?.block_on(commands::cache(&common, c)).map_err(with_hint),
        Command::Publish(a) => rt()?.block_on(commands::publish(&common, a)).map_err(with_hint),
        Command::Subscribe(a) => rt()?.block_on(commands::subscribe(&common, a)).map_err(with_hint),
        Command::Group(c) => rt()?.block_on(commands::group(&common, c)).map_err(with_hint),
        Command::Log(c) => logtool::run(c),
        Command::Certs(CertsCommand::Broker {
            broker,
            ca_dir,
            out,
            region,
        }) => {
            if let Some(why) = felix_client::transport::identity::region_problem(&region) {
                anyhow::bail!("--region {region:?}: {why}");
            }
            let ca = felix_client::transport::dev_certificates(&ca_dir, &[])?;
            print_issued("cluster", &ca.issue_broker(broker, &region, &out)?);
            Ok(())
        }
        Command::ValueKey(ValueKeyCommand::New { file }) => {
            let existing = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(anyhow::anyhow!("{}: {e}", file.display())),
            };
            let text = felix_client::ValueKeys::rotate(&existing)?;
            // Beside it, then renamed over it: a crash mid-write must not
            // lose the keys that open what was sealed before.
            let tmp = file.with_extension("tmp");
            felix_broker::config::write_private(&tmp, text.as_bytes())
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let keys = felix_client::ValueKeys::parse(&text)?;
            println!("{}: key {} seals from now on", file.display(), keys.sealing_id());
            Ok(())
        }
        Command::MasterKey(MasterKeyCommand::New { file, id }) => {
            let text = felix_broker::at_rest::FileMasterKey::generate(&id)?;
            felix_broker::at_rest::write_new_key_file(&file, &text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}: master key {id}", file.display());
            Ok(())
        }
        Command::Certs(CertsCommand::Controlplane { ca_dir, out, names }) => {
            let ca = felix_client::transport::dev_certificates(&ca_dir, &[])?;
            print_issued("tls", &ca.issue_controlplane(&out, &names)?);
            Ok(())
        }
    }
}

/// An issued certificate as the TOML table (`[cluster]`, `[tls]`) that
/// names its files.
fn print_issued(table: &str, c: &felix_client::transport::IssuedCertificate) {
    println!(
        "[{table}]\ncert = {:?}\nkey = {:?}\nca = {:?}",
        c.cert.display().to_string(),
        c.key.display().to_string(),
        c.ca.display().to_string()
    );
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
