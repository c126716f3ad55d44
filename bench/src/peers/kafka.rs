//! The Kafka door beside Felix's own protocol on the same broker: the same
//! workloads, one through each, so the ratio is what the door costs.
//!
//! The Kafka side is a minimal client over `kafka-protocol`'s codec (one
//! request at a time per connection, as a producer awaiting each ack
//! does), so the figure is the door's and not a client library's
//! batching. Produce uses acks=all; on one broker that is the stream's
//! own durability, which both sides share.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::felix::{prefill, publish_on, replay_on};
use super::load::{self, closed_loop, Figure};
use super::report::{Row, Table};
use super::Plan;
use crate::cluster::ready_stream;
use felix_cli::devcluster::LocalBrokers;

/// The door's namespace; with no tokens its tenant is the development one.
const NAMESPACE: &str = "peers";
/// Produce and Fetch versions the door serves (docs/kafka.md).
const PRODUCE_VERSION: i16 = 8;
const FETCH_VERSION: i16 = 11;
/// The largest response this client reads.
const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// What one Fetch may return of the partition (librdkafka's default
/// `max.partition.fetch.bytes`).
const PARTITION_FETCH_BYTES_MAX: i32 = 1 << 20;
/// A fetch's long-poll wait.
const FETCH_WAIT_MS: i32 = 500;
/// Fetches that may return nothing in a row before the drain gives up.
const EMPTY_FETCHES_MAX: u32 = 60;

/// One broker serving a Kafka door.
struct Door {
    brokers: LocalBrokers,
    addr: String,
    durability: String,
    _dir: tempfile::TempDir,
}

impl Door {
    fn start(durability: &str) -> anyhow::Result<Door> {
        let (brokers, addr, dir) = super::broker_with_door(|addr| {
            format!("[kafka]\nlisten = {addr:?}\nnamespace = {NAMESPACE:?}\n")
        })?;
        Ok(Door {
            brokers,
            addr,
            durability: durability.into(),
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.brokers.children.iter().flatten().map(|c| c.id()).collect()
    }

    /// A fresh one-shard stream the door names `topic`, and a native
    /// client of the broker.
    async fn topic(&self, what: &str) -> anyhow::Result<(felix_client::Client, String, String)> {
        let topic = format!("{what}-{}", load::now_ns());
        let stream = format!("{}/{NAMESPACE}/{topic}", felix_model::names::DEV_TENANT);
        let client = ready_stream(&self.brokers, &stream, &self.durability, 1).await?;
        Ok((client, stream, topic))
    }
}

/// One connection to a Kafka door, one request in flight.
struct Conn {
    io: TcpStream,
    correlation: i32,
    out: BytesMut,
}

impl Conn {
    async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let io = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the Kafka door at {addr}"))?;
        io.set_nodelay(true)?;
        Ok(Conn {
            io,
            correlation: 0,
            out: BytesMut::new(),
        })
    }

    async fn call<R: Request>(&mut self, version: i16, req: &R) -> anyhow::Result<R::Response> {
        self.correlation = self.correlation.wrapping_add(1);
        let mut head = RequestHeader::default();
        head.request_api_key = R::KEY;
        head.request_api_version = version;
        head.correlation_id = self.correlation;
        head.client_id = Some(StrBytes::from_static_str("felix-bench"));
        let hv = R::header_version(version);
        let size = head.compute_size(hv)? + req.compute_size(version)?;
        self.out.clear();
        self.out.put_i32(i32::try_from(size)?);
        head.encode(&mut self.out, hv)?;
        req.encode(&mut self.out, version)?;
        self.io.write_all(&self.out).await?;
        let len = usize::try_from(self.io.read_i32().await?).context("a negative response size")?;
        anyhow::ensure!(len <= RESPONSE_BYTES_MAX, "a response of {len} bytes");
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        let mut body = Bytes::from(body);
        let rh = ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
        anyhow::ensure!(
            rh.correlation_id == self.correlation,
            "response {} to request {}",
            rh.correlation_id,
            self.correlation
        );
        R::Response::decode(&mut body, version)
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// A Produce of one record of `value` to partition 0, acks=all.
fn produce_request(topic: &str, value: &Bytes) -> anyhow::Result<ProduceRequest> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: (load::now_ns() / 1_000_000) as i64,
        key: None,
        value: Some(value.clone()),
        headers: Default::default(),
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(batch.freeze());
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    Ok(r)
}

/// `n` connections for `secs`, each producing one record and awaiting its
/// acknowledgement before the next.
async fn produce(addr: &str, topic: &str, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Arc::new(Mutex::new(Conn::connect(addr).await?)));
    }
    let value = Bytes::from(vec![b'v'; size]);
    let topic: Arc<str> = topic.into();
    closed_loop(n, secs, move |w| {
        let (c, v, topic) = (conns[w].clone(), value.clone(), topic.clone());
        async move {
            let req = produce_request(&topic, &v)?;
            let resp = c.lock().await.call(PRODUCE_VERSION, &req).await?;
            let code = resp
                .responses
                .first()
                .and_then(|t| t.partition_responses.first())
                .map(|p| p.error_code)
                .context("a produce response without the partition")?;
            anyhow::ensure!(code == 0, "produce answered error {code}");
            Ok(())
        }
    })
    .await
}

/// Fetches partition 0 of `topic` from offset 0 until `records` records
/// have been decoded.
async fn drain(addr: &str, topic: &str, records: u64) -> anyhow::Result<Figure> {
    let mut c = Conn::connect(addr).await?;
    let window = load::Window::open();
    let (mut next, mut got, mut empty) = (0i64, 0u64, 0u32);
    while got < records {
        let mut p = FetchPartition::default();
        p.partition = 0;
        p.fetch_offset = next;
        p.current_leader_epoch = -1;
        p.log_start_offset = -1;
        p.partition_max_bytes = PARTITION_FETCH_BYTES_MAX;
        let mut t = FetchTopic::default();
        t.topic = topic_name(topic);
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = FETCH_WAIT_MS;
        req.min_bytes = 1;
        req.max_bytes = 50 << 20;
        req.session_epoch = -1;
        req.topics = vec![t];
        let resp = c.call(FETCH_VERSION, &req).await?;
        let part = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .context("a fetch response without the partition")?;
        anyhow::ensure!(part.error_code == 0, "fetch answered error {}", part.error_code);
        let mut bytes = part.records.clone().unwrap_or_default();
        let before = got;
        while bytes.has_remaining() {
            // The whole batch holding `next` comes back: records before it
            // were counted already.
            for r in RecordBatchDecoder::decode(&mut bytes)?.records {
                if r.offset >= next {
                    next = r.offset + 1;
                    got += 1;
                }
            }
        }
        empty = if got == before { empty + 1 } else { 0 };
        anyhow::ensure!(
            empty < EMPTY_FETCHES_MAX,
            "the fetch stopped after {got} of {records} records"
        );
    }
    Ok(window.figure(got, None, 0))
}

pub(crate) async fn run(plan: &Plan) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "kafka",
        "The Kafka door beside Felix's own protocol on the same broker (`interval:10`): produce acks=all one record per request; consume from offset 0",
        "records/s",
    );
    let door = Door::start("interval:10")?;
    for &size in &plan.sizes {
        for &n in &plan.producers {
            eprintln!("kafka produce {size} B x{n}");
            load::watch(door.pids());
            let (client, stream, topic) = door.topic("produce").await?;
            let f = produce(&door.addr, &topic, n, size, plan.secs).await?;
            let native = publish_on(&client, &stream, n, size, plan.secs).await;
            client.close().await;
            t.push(Row::new(
                format!("produce {size} B, {n} producers"),
                "Kafka door".into(),
                "native".into(),
                f,
                native.map_err(|e| format!("{e:#}")),
                Some(0.8),
            ));
        }
        // A 4 KiB replay of as many records would be 16 times the bytes.
        let records = if size > 1024 {
            plan.replay_records / 8
        } else {
            plan.replay_records
        };
        eprintln!("kafka consume {records} x {size} B");
        load::watch(door.pids());
        let (client, stream, topic) = door.topic("consume").await?;
        prefill(&client, &stream, records, size).await?;
        let f = drain(&door.addr, &topic, records).await?;
        let native = replay_on(&client, &stream, records).await;
        client.close().await;
        t.push(Row::new(
            format!("consume {records} records of {size} B from offset 0"),
            "Kafka door".into(),
            "native".into(),
            f,
            native.map_err(|e| format!("{e:#}")),
            Some(0.8),
        ));
    }
    Ok(t)
}
