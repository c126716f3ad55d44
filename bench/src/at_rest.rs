//! What encryption at rest costs a publisher: the broker benchmark's
//! publish→deliver latency (batch 1) and throughput (batch 64) shapes,
//! fan-out 1, at 256 B and 4 KiB, against a broker whose tenant has
//! encryption off and then on (a fresh broker in this process each, the
//! same machine and run), with the on/off ratio. CPU is this process's
//! (broker and client together): the client's share is the same in both
//! runs, so the difference is the broker's sealing and opening.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use felix_broker::at_rest::FileMasterKey;
use felix_broker::config::{BrokerConfig, EncryptionConfig};
use felix_broker::node::system_clock;
use felix_broker::server;
use felix_client::transport::ClientTls;
use felix_client::wire::StreamKind;
use felix_client::{Client, ClientConfig};
use felix_controlplane::model::{DataKey, EncryptionSpec};

use crate::broker::{create, latency, loadavg, throughput, Row};
use crate::groups::process_cpu;

/// The broker benchmark's settings.
pub type Args = crate::broker::Args;

const MASTER_ID: &str = "bench-master";

pub fn run(a: Args) -> anyhow::Result<()> {
    let secs = Duration::from_secs_f64(if a.quick { 0.5 } else { a.seconds });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "encryption at rest: loopback QUIC + TLS, durability {}, {:.1} s per figure, load average {}",
        a.durability,
        secs.as_secs_f64(),
        loadavg()
    );
    let off = rt.block_on(measure(false, secs, &a.durability))?;
    let on = rt.block_on(measure(true, secs, &a.durability))?;
    println!("| shape | off ops/s | on ops/s | on/off | off p50 µs | on p50 µs | off p99 µs | on p99 µs | off CPU µs/record | on CPU µs/record |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((a, ca), (b, cb)) in off.iter().zip(&on) {
        let q = |r: &Row, p: f64| r.hist.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            a.shape,
            a.ops_s,
            b.ops_s,
            b.ops_s / a.ops_s.max(1e-9),
            q(a, 0.5),
            q(b, 0.5),
            q(a, 0.99),
            q(b, 0.99),
            ca,
            cb
        );
    }
    println!("load average at end: {}", loadavg());
    Ok(())
}

/// The rows, each with this process's CPU µs per record.
async fn measure(encrypted: bool, secs: Duration, durability: &str) -> anyhow::Result<Vec<(Row, f64)>> {
    let dir = tempfile::tempdir()?;
    let encryption = if encrypted {
        let file = dir.path().join("master.key");
        felix_broker::at_rest::write_new_key_file(&file, &FileMasterKey::generate(MASTER_ID)?)?;
        Some(EncryptionConfig {
            master_key_file: file,
        })
    } else {
        None
    };
    let config = BrokerConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse()?,
        encryption,
        ..BrokerConfig::default()
    };
    let running = server::start(&config, system_clock()).await?;
    if encrypted {
        // No control plane here: the tenant's key is given as its feed
        // would give it.
        let mut material = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut material)
            .map_err(|_| anyhow::anyhow!("random"))?;
        let tenant = felix_model::names::StreamName::parse("x")?.tenant;
        running.node.at_rest().set_tenant(
            &tenant,
            Some(EncryptionSpec {
                key_id: MASTER_ID.into(),
                rotation_period_ms: 0,
            }),
            vec![DataKey {
                id: 1,
                master_key_id: MASTER_ID.into(),
                material: URL_SAFE_NO_PAD.encode(material),
                created_ms: 0,
            }],
        )?;
    }
    let ca = running.dev_ca.clone().expect("dev certificates");
    let mut c = ClientConfig::new(running.addr.to_string(), ClientTls::from_pem_files(&ca, None)?);
    c.connections_per_broker = 2;
    let client = Client::connect(c).await?;
    let epoch = Instant::now();
    let mut rows = Vec::new();
    for (n, payload) in [256usize, 4096].into_iter().enumerate() {
        let name = format!("lat{n}");
        create(&client, &name, StreamKind::Stream, durability).await?;
        let cpu = process_cpu();
        let r = latency(&client, &name, payload, 1, secs, epoch).await?;
        rows.push(per_record(r, cpu, secs));
        let name = format!("tput{n}");
        create(&client, &name, StreamKind::Stream, durability).await?;
        let cpu = process_cpu();
        let r = throughput(&client, &name, payload, 1, secs).await?;
        rows.push(per_record(r, cpu, secs));
    }
    if encrypted {
        check_sealed(&config.data_dir)?;
    }
    client.close().await;
    running.stop().await;
    Ok(rows)
}

fn per_record(r: Row, cpu_before: Duration, secs: Duration) -> (Row, f64) {
    let records = (r.ops_s * secs.as_secs_f64()).max(1.0);
    let us = (process_cpu() - cpu_before).as_secs_f64() * 1e6 / records;
    (r, us)
}

/// The encrypted run really sealed: the first data batch of a shard's
/// segment is a sealed one.
fn check_sealed(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let shards = data_dir.join(felix_broker::identity::SHARDS_DIR);
    for e in std::fs::read_dir(&shards)? {
        let dir = e?.path();
        for f in std::fs::read_dir(&dir)? {
            let p = f?.path();
            if p.extension().is_some_and(|x| x == "seg") {
                let bytes = std::fs::read(&p)?;
                let at = felix_log::SEGMENT_HEADER_BYTES;
                let h = felix_log::BatchHeader::decode(&bytes[at..])?;
                anyhow::ensure!(h.flags.sealed(), "{} holds a batch in the clear", p.display());
                return Ok(());
            }
        }
    }
    anyhow::bail!("no segment found under {}", shards.display())
}
