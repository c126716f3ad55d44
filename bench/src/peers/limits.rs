//! The machine's limits in the same run as the comparisons: a disk's
//! write+fdatasync rate for equal blocks (the floor under every durable
//! acknowledgement) and a loopback QUIC bulk transfer (the ceiling of any
//! one connection, TLS included).

use std::time::{Duration, Instant};

use felix_client::transport::{self, TransportConfig};

use super::load::Figure;
use super::report::{Row, Table};
use super::Plan;

/// Bytes the QUIC transfer sends in one stream.
const QUIC_BYTES: u64 = 512 << 20;
const QUIC_BYTES_QUICK: u64 = 64 << 20;

pub fn run(plan: &Plan, rt: &tokio::runtime::Runtime) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "limits",
        "The machine: one thread appending equal blocks to a file with fdatasync after each; one loopback QUIC stream (TLS 1.3)",
        "ops/s",
    );
    let dir = tempfile::tempdir_in(".").or_else(|_| tempfile::tempdir())?;
    for block in [256usize, 4096] {
        let (per_s, mb_s, h) = crate::log::fdatasync_limit(dir.path(), block, plan.secs.as_secs_f64())?;
        let f = Figure {
            rate: per_s,
            p50_ms: Some(h.value_at_quantile(0.5) as f64 / 1e6),
            p99_ms: Some(h.value_at_quantile(0.99) as f64 / 1e6),
            errors: 0,
            server_cpu_us_per_op: None,
        };
        t.push(Row::alone(
            format!("write+fdatasync {block} B ({mb_s:.1} MB/s)"),
            f,
        ));
    }
    let bytes = if plan.quick { QUIC_BYTES_QUICK } else { QUIC_BYTES };
    let mb_s = rt.block_on(quic_bulk(bytes))?;
    t.push(
        Row::alone(
            format!("QUIC bulk, one stream, {} MiB", bytes >> 20),
            Figure::rate_only(mb_s),
        )
        .unit("MB/s"),
    );
    Ok(t)
}

/// MB/s of one unidirectional stream of `bytes` over loopback.
async fn quic_bulk(bytes: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let certs = transport::dev_certificates(dir.path(), &[])?;
    let cfg = TransportConfig::default();
    let server =
        transport::server_endpoint("127.0.0.1:0".parse()?, &certs.server_tls(false)?, b"bulk", &cfg)?;
    let addr = server.local_addr()?;
    let sink = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("no connection"))?
            .await?;
        let mut rx = conn.accept_uni().await?;
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Some(n) = rx.read(&mut buf).await? {
            got += n as u64;
        }
        anyhow::Ok(got)
    });
    let client = transport::client_endpoint(&certs.client_tls(false)?, b"bulk", &cfg)?;
    let conn = client.connect(addr, "localhost")?.await?;
    let mut tx = conn.open_uni().await?;
    let chunk = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        tx.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    tx.finish()?;
    let got = tokio::time::timeout(Duration::from_secs(120), sink).await???;
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(got == sent, "sent {sent} bytes, {got} arrived");
    conn.close(0u32.into(), b"done");
    Ok(got as f64 / took / 1e6)
}
