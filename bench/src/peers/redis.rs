//! The Redis side, through the `redis` crate: one connection per client,
//! each doing one command at a time (no pipelining), as Felix's clients do.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use super::felix::KEYS;
use super::load::{self, closed_loop, CacheOp, Figure};

pub async fn cache(
    addr: String,
    op: CacheOp,
    n: usize,
    size: usize,
    secs: Duration,
) -> anyhow::Result<Figure> {
    let client = redis::Client::open(format!("redis://{addr}/")).context("the Redis address")?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to Redis at {addr}"))?,
        );
    }
    let value = Bytes::from(vec![b'c'; size]);
    if op == CacheOp::Get {
        let (c, v) = (conns[0].clone(), value.clone());
        load::each(n, KEYS, move |i| {
            let (mut c, v) = (c.clone(), v.clone());
            async move {
                redis::cmd("SET")
                    .arg(load::key(i))
                    .arg(v.as_ref())
                    .query_async::<()>(&mut c)
                    .await?;
                Ok(())
            }
        })
        .await?;
    }
    closed_loop(n, secs, move |w| {
        let (mut c, v) = (conns[w].clone(), value.clone());
        async move {
            let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ load::now_ns();
            let k = load::key(load::next_rand(&mut x) % KEYS);
            match op {
                CacheOp::Put => {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(v.as_ref())
                        .query_async::<()>(&mut c)
                        .await?;
                }
                CacheOp::Get => {
                    let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query_async(&mut c).await?;
                    anyhow::ensure!(got.is_some(), "a filled key is missing");
                }
                CacheOp::GetMiss => {
                    let k = load::missing_key(load::next_rand(&mut x) % KEYS);
                    let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query_async(&mut c).await?;
                    anyhow::ensure!(got.is_none(), "a key never written was found");
                }
            }
            Ok(())
        }
    })
    .await
}
