//! `felix dev --brokers N`: a local cluster of N broker processes, each
//! with its own data directory and configuration file under the dev data
//! directory, sharing one development CA. The configurations it writes are
//! also a template for a hand-run cluster (see `deploy/local/`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use felix_broker::config::{local_cluster_toml, LocalMember};
use felix_broker::server::ClientProfile;
use felix_client::transport::dev_certificates;

/// Ports above a broker's client port where it replicates.
const RAFT_PORT_OFFSET: u16 = 100;

pub async fn run(data_dir: &Path, listen: SocketAddr, n: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let tls_dir = data_dir.join("cluster");
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
    let mut children = Vec::new();
    for m in &members {
        std::fs::create_dir_all(&m.data_dir)?;
        let path = m.data_dir.join("broker.toml");
        std::fs::write(&path, local_cluster_toml(m, &members, &tls_dir, ""))
            .with_context(|| format!("writing {}", path.display()))?;
        children.push(spawn(&path)?);
    }
    let profile_path = data_dir.join("client.toml");
    ClientProfile {
        brokers: members.iter().map(|m| m.client.to_string()).collect(),
        server_name: "localhost".into(),
        ca: certs.ca.clone(),
        cert: None,
        key: None,
    }
    .save(&profile_path)?;
    println!("felix dev is running a cluster of {n} brokers");
    for m in &members {
        println!(
            "  broker {}  quic://{}  (replication {}, data {})",
            m.id,
            m.client,
            m.raft,
            m.data_dir.display()
        );
    }
    println!("  CA        {}", certs.ca.display());
    println!("  profile   {}", profile_path.display());
    println!("try: felix stream create orders --shards 3   (Ctrl-C stops)");
    crate::wait_for_shutdown().await;
    eprintln!("stopping the brokers");
    for c in &mut children {
        // SIGTERM lets each close its logs cleanly.
        // SAFETY: kill(2) on our own, not yet reaped, child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok(())
}

fn spawn(config: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the felix executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["broker", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
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
