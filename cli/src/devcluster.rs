//! `felix dev --brokers N`: a local cluster of N broker processes, each
//! with its own data directory and configuration file under the dev data
//! directory, sharing one development CA. The configurations it writes are
//! also a template for a hand-run cluster (see `deploy/local/`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use felix_broker::config::{local_broker_toml, local_cluster_toml, write_private, LocalMember};
use felix_broker::server::ClientProfile;
use felix_client::transport::dev_certificates;

/// `felix`'s subcommand that runs a broker from a file.
pub const BROKER_SUBCOMMAND: &str = "broker";
/// Ports above a broker's client port where it replicates.
const RAFT_PORT_OFFSET: u16 = 100;

/// Broker processes of a local cluster, stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct LocalBrokers {
    pub members: Vec<LocalMember>,
    pub children: Vec<Option<Child>>,
    pub configs: Vec<PathBuf>,
    /// The development CA's certificate, for clients.
    pub ca: PathBuf,
    /// The subcommand of this executable that runs a broker from a file
    /// (`broker` for `felix`; the benchmarks' binary has its own).
    subcommand: &'static str,
}

impl LocalBrokers {
    /// Writes a configuration for each of `n` brokers under `data_dir`
    /// (`extra` added to each) and starts them, each as this executable
    /// with `subcommand --config FILE` ([`BROKER_SUBCOMMAND`] for `felix`).
    /// With port 0 in `listen`, free ports are picked. `replicated: false`
    /// (with `n` = 1) runs a plain broker without a `[cluster]`: the RF=1
    /// baseline of benchmarks; a cluster's `extra` names the control plane
    /// its brokers follow.
    pub fn spawn(
        subcommand: &'static str,
        data_dir: &Path,
        listen: SocketAddr,
        n: u32,
        extra: &str,
        replicated: bool,
    ) -> anyhow::Result<LocalBrokers> {
        anyhow::ensure!(replicated || n == 1, "only one broker runs without a cluster");
        anyhow::ensure!(
            !replicated || extra.contains("[controlplane]"),
            "a cluster's brokers follow a control plane: `extra` must name it"
        );
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        // A plain broker keeps its development CA under its data directory;
        // a cluster's stays with this process, which issues each broker its
        // own certificate (no broker holds the CA's key).
        let tls_dir = match replicated {
            true => data_dir.join("cluster"),
            false => data_dir.join("broker1"),
        };
        let certs = dev_certificates(&tls_dir, &[]).context("creating the development CA")?;
        // With port 0, every port is picked up front, all held at once so
        // none repeats.
        let free = if listen.port() == 0 {
            free_ports(listen, 2 * n as usize)?
        } else {
            Vec::new()
        };
        let members = (0..n as u16)
            .map(|i| -> anyhow::Result<LocalMember> {
                let port = |offset: u16, k: usize| -> anyhow::Result<u16> {
                    if listen.port() == 0 {
                        Ok(free[k])
                    } else {
                        listen
                            .port()
                            .checked_add(offset + i)
                            .context("--listen port too high for this many brokers")
                    }
                };
                Ok(LocalMember {
                    id: u64::from(i) + 1,
                    client: SocketAddr::new(listen.ip(), port(0, 2 * i as usize)?),
                    raft: SocketAddr::new(listen.ip(), port(RAFT_PORT_OFFSET, 2 * i as usize + 1)?),
                    data_dir: data_dir.join(format!("broker{}", i + 1)),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut b = LocalBrokers {
            members: Vec::new(),
            children: Vec::new(),
            configs: Vec::new(),
            ca: certs.ca.clone(),
            subcommand,
        };
        for m in &members {
            std::fs::create_dir_all(&m.data_dir)?;
            let path = m.data_dir.join("broker.toml");
            let text = match replicated {
                true => {
                    let cert = certs
                        .issue_broker(
                            m.id,
                            felix_client::transport::identity::REGION_DEFAULT,
                            &cert_dir(&data_dir, m.id),
                        )
                        .with_context(|| format!("issuing broker {}'s certificate", m.id))?;
                    local_cluster_toml(m, None, &cert, extra)
                }
                false => local_broker_toml(m, extra),
            };
            // It names the control plane's secret.
            write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            b.children.push(Some(spawn(subcommand, &path)?));
            b.configs.push(path);
        }
        b.members = members;
        Ok(b)
    }

    /// Starts one more broker on free loopback ports, configured with
    /// `extra`, which must name the control plane the others follow: its
    /// registry introduces the new broker to them, and no other broker's
    /// file changes. Returns its index in `members`.
    pub fn add(&mut self, extra: &str) -> anyhow::Result<usize> {
        anyhow::ensure!(
            extra.contains("[controlplane]"),
            "a broker joins a running cluster through its control plane"
        );
        let first = self.members.first().context("a cluster to join")?;
        let root = first
            .data_dir
            .parent()
            .context("the cluster's directory")?
            .to_path_buf();
        let id = self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let free = free_ports(SocketAddr::new(first.client.ip(), 0), 2)?;
        let m = LocalMember {
            id,
            client: SocketAddr::new(first.client.ip(), free[0]),
            raft: SocketAddr::new(first.client.ip(), free[1]),
            data_dir: root.join(format!("broker{id}")),
        };
        std::fs::create_dir_all(&m.data_dir)?;
        let path = m.data_dir.join("broker.toml");
        let cert = dev_certificates(&root.join("cluster"), &[])
            .and_then(|ca| {
                ca.issue_broker(
                    id,
                    felix_client::transport::identity::REGION_DEFAULT,
                    &cert_dir(&root, id),
                )
            })
            .with_context(|| format!("issuing broker {id}'s certificate"))?;
        let text = local_cluster_toml(&m, None, &cert, extra);
        write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        self.children.push(Some(spawn(self.subcommand, &path)?));
        self.configs.push(path);
        self.members.push(m);
        Ok(self.members.len() - 1)
    }

    /// SIGKILLs broker `i` (an index into `members`) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts broker `i` again from its configuration and data.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.children[i] = Some(spawn(self.subcommand, &self.configs[i])?);
        Ok(())
    }

    pub fn client_addresses(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }
}

impl Drop for LocalBrokers {
    fn drop(&mut self) {
        for c in self.children.iter().flatten() {
            // SIGTERM lets each close its logs cleanly.
            // SAFETY: kill(2) on our own, not yet reaped, child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in self.children.iter_mut().flatten() {
            let _ = c.wait();
        }
    }
}

/// Where broker `id`'s certificate and key are kept: beside its data
/// directory, not in it, so a broker whose disk is lost (its directory
/// emptied) comes back with the same identity certificate, as one whose
/// certificate an operator provisions apart from its data would.
fn cert_dir(root: &Path, id: u64) -> std::path::PathBuf {
    root.join("certs").join(format!("broker{id}"))
}

/// The `[controlplane]` line naming the CA its certificate comes from.
pub fn ca_line(ca: Option<&Path>) -> String {
    ca.map(|c| format!("ca = {:?}\n", c.display().to_string()))
        .unwrap_or_default()
}

/// Runs the cluster with a control plane in this process (at `cp`) that
/// every broker follows, until SIGINT or SIGTERM.
pub async fn run(data_dir: &Path, listen: SocketAddr, n: u32, cp: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let embedded = crate::embedded::start(&data_dir, cp, &data_dir.join("cluster"))
        .await
        .with_context(|| format!("starting the embedded control plane on {cp}"))?;
    let link = &embedded.link;
    // One master key for every broker (made on first start, kept beside
    // the cluster's CA), so a tenant can turn encryption at rest on.
    let master = felix_broker::at_rest::dev_master_key(&data_dir.join("cluster"))?;
    let extra = format!(
        "[controlplane]\nurls = {:?}\nsecret = {:?}\n{}\n[encryption]\nmaster_key_file = {:?}\n",
        link.urls,
        link.secret,
        ca_line(link.ca.as_deref()),
        master.master_key_file.display().to_string()
    );
    let brokers = LocalBrokers::spawn(BROKER_SUBCOMMAND, &data_dir, listen, n, &extra, true)?;
    // The default replication factor counts the active brokers, so a
    // stream created before all had registered would get fewer replicas:
    // the profile clients use is written, and the cluster announced, once
    // they have.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(REGISTERED_WAIT_MS);
    loop {
        let active = registered_active(&embedded.handle.node, n);
        if active >= n as usize {
            break;
        }
        if std::time::Instant::now() >= until {
            eprintln!(
                "warning: {active} of {n} brokers registered in {} s; a stream created now is placed on those (see each broker.log)",
                REGISTERED_WAIT_MS / 1000
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let profile_path = data_dir.join("client.toml");
    let cp_url = embedded.handle.url();
    ClientProfile {
        brokers: brokers.client_addresses(),
        server_name: "localhost".into(),
        ca: brokers.ca.clone(),
        cert: None,
        key: None,
        token: Some(embedded.dev_token.clone()),
        controlplane: Some(cp_url.clone()),
        controlplane_ca: link.ca.clone(),
        admin: Vec::new(),
        redis: None,
        kafka: None,
    }
    .save(&profile_path)?;
    println!("felix dev is running a cluster of {n} brokers");
    for m in &brokers.members {
        println!(
            "  broker {}  quic://{}  (replication {}, data and broker.log in {})",
            m.id,
            m.client,
            m.raft,
            m.data_dir.display()
        );
    }
    println!(
        "  control   {cp_url}  (operator secret in {})",
        data_dir.join(crate::embedded::DIR).join("secret").display()
    );
    println!("  token     {}", embedded.dev_token);
    println!("  CA        {}", brokers.ca.display());
    println!("  profile   {}", profile_path.display());
    println!("try: felix stream create orders --shards 3   (Ctrl-C stops)");
    crate::run::wait_for_shutdown().await;
    eprintln!("stopping the brokers");
    drop(brokers);
    embedded.handle.shutdown().await;
    Ok(())
}

/// How long `felix dev --brokers N` waits for its brokers to register
/// before it announces the cluster anyway.
const REGISTERED_WAIT_MS: u64 = 60_000;

/// Brokers 1 to `n` the control plane holds as active (a registry kept
/// from an earlier run with more brokers may name others).
fn registered_active(node: &felix_controlplane::node::Node, n: u32) -> usize {
    node.read(|m| {
        m.brokers
            .range(1..=n)
            .filter(|(_, b)| b.status == felix_controlplane::model::BrokerStatus::Active)
            .count()
    })
}

fn spawn(subcommand: &str, config: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the felix executable")?;
    // Each broker logs to a file beside its configuration, which a
    // restart appends to.
    let log_path = config.with_file_name("broker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args([subcommand, "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The brokers die with this process, even when it is killed.
    // SAFETY: prctl(2) is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting a broker with {}", config.display()))
}

/// `n` distinct UDP ports (QUIC's) free now on `at`'s address.
fn free_ports(at: SocketAddr, n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::UdpSocket::bind(SocketAddr::new(at.ip(), 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}
