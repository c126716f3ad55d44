//! What each data request means over Felix: Metadata, Produce, Fetch and
//! ListOffsets as requests to the broker's [`Handler`] under the
//! connection's session (`docs/kafka.md`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use felix_client::server::{Handler, PushSource, Reply};
use felix_client::wire::{
    AckLevel, ErrorReply, Message, ShardInfo, ShardStats, Start, StreamConfig, StreamInfo,
};
use felix_model::{Durability, StreamKind};
use kafka_protocol::messages::{
    fetch_response, list_offsets_response, metadata_response, produce_response, ApiKey, BrokerId,
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::apis::Request;
use crate::frame;
use crate::names;
use crate::records::{self, Transcoded};

/// Longest a fetch waits for records (`max_wait_ms` above it is cut).
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Most record bytes one fetch response carries (`max_bytes` above it is
/// cut; a first batch larger than it still goes, alone, as KIP-74 asks).
pub const FETCH_BYTES_MAX: usize = 32 << 20;
/// What the broker's refusal of a batch its producer is past says
/// (`felix_broker::windows::Behind`, which reaches a door as text).
const BEHIND: &str = "already written";
/// Longest ListOffsets by timestamp waits on a shard's time index.
pub const LIST_OFFSETS_WAIT_MS: u64 = 200;

const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const REQUEST_TIMED_OUT: i16 = 7;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUIRED_ACKS: i16 = 21;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const INVALID_REQUEST: i16 = 42;
const POLICY_VIOLATION: i16 = 44;
pub(crate) const UNKNOWN_SERVER_ERROR: i16 = -1;

/// How a listener serves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The namespace of the connection's tenant whose streams are topics.
    pub namespace: String,
    /// Serve TLS with this configuration; `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub connections_max: usize,
    /// `host:port` clients are told to reach this broker at (Metadata);
    /// `None`: the listener's own address.
    pub advertise: Option<String>,
    /// The broker id clients see (Metadata's node id).
    pub broker_id: i32,
    /// Partitions of a topic Metadata creates when a client names one
    /// that does not exist (0: never create).
    pub auto_create_partitions: u32,
    /// The brokers' doors, by broker id, in a cluster (`None`: one broker).
    pub doors: Option<Doors>,
}

/// Where broker `id`'s Kafka door listens (`host:port`), if it has one.
#[derive(Clone)]
pub struct Doors(pub Arc<dyn Fn(u64) -> Option<String> + Send + Sync>);

impl std::fmt::Debug for Doors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Doors(..)")
    }
}

/// What Metadata says of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// `None`: no leader a client can reach now (LEADER_NOT_AVAILABLE,
    /// which clients answer by asking again).
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
}

/// The partition view of a shard in a cluster: its leader if that
/// broker's door is known (this broker's always is), and the replicas
/// whose doors are. Sans-IO.
pub fn partition_view(me: u64, shard: &ShardInfo, door: &dyn Fn(u64) -> Option<String>) -> PartitionView {
    let reachable = |b: u64| b == me || door(b).is_some();
    let replicas: Vec<u64> = shard.replicas.iter().copied().filter(|&b| reachable(b)).collect();
    match shard.leader {
        Some(l) if reachable(l) => PartitionView {
            leader: Some(l),
            replicas: if replicas.is_empty() { vec![l] } else { replicas },
        },
        _ => PartitionView {
            leader: None,
            replicas,
        },
    }
}

/// The broker's clock (ms since the epoch), for records without a time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The Kafka error a broker error is answered with.
pub fn code_of(e: &ErrorReply) -> i16 {
    match e {
        ErrorReply::NotLeader { .. } => NOT_LEADER_OR_FOLLOWER,
        ErrorReply::UnknownStream(_) => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorReply::Unauthorized(_) | ErrorReply::Forbidden(_) => TOPIC_AUTHORIZATION_FAILED,
        ErrorReply::Overloaded { .. } | ErrorReply::Timeout(_) => REQUEST_TIMED_OUT,
        ErrorReply::InvalidRequest(_) => INVALID_REQUEST,
        ErrorReply::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        ErrorReply::QuotaExceeded(_) => POLICY_VIOLATION,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// The door a listener's connections share.
pub(crate) struct Door<H: Handler> {
    pub(crate) handler: Arc<H>,
    pub(crate) settings: Settings,
    pub(crate) clock: Clock,
    pub(crate) coordinator: Arc<crate::coordinator::Coordinator>,
    pub(crate) sequences: crate::idem::Sequences,
}

/// One request's context.
pub(crate) struct Cx<'a, S> {
    pub(crate) session: &'a Arc<S>,
    pub(crate) tenant: &'a str,
    pub(crate) version: i16,
    /// The request header's client id.
    pub(crate) client_id: &'a str,
    pub(crate) peer: std::net::SocketAddr,
}

/// One partition's figures among its topic's.
fn partition_stats(stats: &Result<Vec<ShardStats>, i16>, partition: i32) -> Result<&ShardStats, i16> {
    match stats {
        Err(code) => Err(*code),
        Ok(shards) => shards
            .iter()
            .find(|s| i64::from(s.shard) == i64::from(partition))
            .ok_or(UNKNOWN_TOPIC_OR_PARTITION),
    }
}

/// A data request's response.
pub(crate) enum Response {
    Metadata(MetadataResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    FindCoordinator(kafka_protocol::messages::FindCoordinatorResponse),
    JoinGroup(kafka_protocol::messages::JoinGroupResponse),
    SyncGroup(kafka_protocol::messages::SyncGroupResponse),
    Heartbeat(kafka_protocol::messages::HeartbeatResponse),
    LeaveGroup(kafka_protocol::messages::LeaveGroupResponse),
    OffsetCommit(kafka_protocol::messages::OffsetCommitResponse),
    OffsetFetch(kafka_protocol::messages::OffsetFetchResponse),
    ListGroups(kafka_protocol::messages::ListGroupsResponse),
    DescribeGroups(kafka_protocol::messages::DescribeGroupsResponse),
    DeleteGroups(kafka_protocol::messages::DeleteGroupsResponse),
    InitProducerId(kafka_protocol::messages::InitProducerIdResponse),
    CreateTopics(kafka_protocol::messages::CreateTopicsResponse),
    DeleteTopics(kafka_protocol::messages::DeleteTopicsResponse),
    DescribeConfigs(kafka_protocol::messages::DescribeConfigsResponse),
    AlterConfigs(kafka_protocol::messages::AlterConfigsResponse),
    IncrementalAlterConfigs(kafka_protocol::messages::IncrementalAlterConfigsResponse),
}

impl Response {
    pub(crate) fn encode_into(
        &self,
        out: &mut BytesMut,
        key: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> Result<(), String> {
        match self {
            Response::Metadata(r) => frame::respond(out, key, version, correlation_id, r),
            Response::Produce(r) => frame::respond(out, key, version, correlation_id, r),
            Response::Fetch(r) => frame::respond(out, key, version, correlation_id, r),
            Response::ListOffsets(r) => frame::respond(out, key, version, correlation_id, r),
            Response::FindCoordinator(r) => frame::respond(out, key, version, correlation_id, r),
            Response::JoinGroup(r) => frame::respond(out, key, version, correlation_id, r),
            Response::SyncGroup(r) => frame::respond(out, key, version, correlation_id, r),
            Response::Heartbeat(r) => frame::respond(out, key, version, correlation_id, r),
            Response::LeaveGroup(r) => frame::respond(out, key, version, correlation_id, r),
            Response::OffsetCommit(r) => frame::respond(out, key, version, correlation_id, r),
            Response::OffsetFetch(r) => frame::respond(out, key, version, correlation_id, r),
            Response::ListGroups(r) => frame::respond(out, key, version, correlation_id, r),
            Response::DescribeGroups(r) => frame::respond(out, key, version, correlation_id, r),
            Response::DeleteGroups(r) => frame::respond(out, key, version, correlation_id, r),
            Response::InitProducerId(r) => frame::respond(out, key, version, correlation_id, r),
            Response::CreateTopics(r) => frame::respond(out, key, version, correlation_id, r),
            Response::DeleteTopics(r) => frame::respond(out, key, version, correlation_id, r),
            Response::DescribeConfigs(r) => frame::respond(out, key, version, correlation_id, r),
            Response::AlterConfigs(r) => frame::respond(out, key, version, correlation_id, r),
            Response::IncrementalAlterConfigs(r) => frame::respond(out, key, version, correlation_id, r),
        }
    }
}

/// A new idempotent producer: an id no other is given (random, 47 bits)
/// at epoch 0. Transactional producers are refused.
fn init_producer_id(
    r: &kafka_protocol::messages::InitProducerIdRequest,
) -> kafka_protocol::messages::InitProducerIdResponse {
    let mut resp = kafka_protocol::messages::InitProducerIdResponse::default();
    if r.transactional_id.is_some() {
        resp.error_code = INVALID_REQUEST;
        resp.producer_id = kafka_protocol::messages::ProducerId(-1);
        resp.producer_epoch = -1;
        return resp;
    }
    resp.producer_id = kafka_protocol::messages::ProducerId(crate::idem::new_producer_id());
    resp.producer_epoch = 0;
    resp
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// Kafka's ACL operation numbers: READ, WRITE, DELETE, DESCRIBE,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS, the ones this door serves on a topic.
const TOPIC_OPERATIONS_SERVED: i32 = (1 << 3) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 11);
/// CREATE and DESCRIBE on the cluster.
const CLUSTER_OPERATIONS_SERVED: i32 = (1 << 5) | (1 << 8);

impl<H: Handler> Door<H> {
    pub(crate) async fn ask(&self, session: &H::Session, m: Message) -> Result<Message, ErrorReply> {
        match self.handler.request(session, m).await {
            Reply::Message(Message::Error(e)) => Err(e),
            Reply::Message(m) => Ok(m),
            Reply::Nothing => Ok(Message::Done),
            Reply::Subscription(_) => Err(ErrorReply::Internal(
                "a subscription where a reply was due".into(),
            )),
            #[allow(unreachable_patterns)]
            _ => Err(ErrorReply::Internal("an unexpected reply".into())),
        }
    }

    pub(crate) fn stream(&self, tenant: &str, topic: &str) -> Result<String, &'static str> {
        names::stream_of(tenant, &self.settings.namespace, topic)
    }

    /// `Ok(None)`: no response is due (produce with acks=0).
    pub(crate) async fn exec(&self, cx: &Cx<'_, H::Session>, r: Request) -> Result<Option<Response>, String> {
        Ok(match r {
            Request::Metadata(m) => Some(Response::Metadata(self.metadata(cx, m).await)),
            Request::Produce(p) => self.produce(cx, p).await.map(Response::Produce),
            Request::Fetch(f) => Some(Response::Fetch(self.fetch(cx, f).await)),
            Request::ListOffsets(l) => Some(Response::ListOffsets(self.list_offsets(cx, l).await)),
            Request::FindCoordinator(f) => {
                Some(Response::FindCoordinator(self.find_coordinator(cx, f).await))
            }
            Request::JoinGroup(j) => Some(Response::JoinGroup(self.join_group(cx, j).await)),
            Request::SyncGroup(x) => Some(Response::SyncGroup(self.sync_group(cx, x).await)),
            Request::Heartbeat(h) => Some(Response::Heartbeat(self.heartbeat(cx, h).await)),
            Request::LeaveGroup(l) => Some(Response::LeaveGroup(self.leave_group(cx, l).await)),
            Request::OffsetCommit(o) => Some(Response::OffsetCommit(self.offset_commit(cx, o).await)),
            Request::OffsetFetch(o) => Some(Response::OffsetFetch(self.offset_fetch(cx, o).await)),
            Request::ListGroups(_) => Some(Response::ListGroups(self.list_groups(cx).await)),
            Request::DescribeGroups(d) => Some(Response::DescribeGroups(self.describe_groups(cx, d).await)),
            Request::DeleteGroups(d) => Some(Response::DeleteGroups(self.delete_groups(cx, d).await)),
            Request::InitProducerId(r) => Some(Response::InitProducerId(init_producer_id(&r))),
            Request::CreateTopics(c) => Some(Response::CreateTopics(self.create_topics(cx, c).await)),
            Request::DeleteTopics(d) => Some(Response::DeleteTopics(self.delete_topics(cx, d).await)),
            Request::DescribeConfigs(d) => {
                Some(Response::DescribeConfigs(self.describe_configs(cx, d).await))
            }
            Request::AlterConfigs(a) => Some(Response::AlterConfigs(self.alter_configs(cx, a).await)),
            Request::IncrementalAlterConfigs(a) => Some(Response::IncrementalAlterConfigs(
                self.incremental_alter_configs(cx, a).await,
            )),
            other => return Err(format!("{other:?} is not a data request")),
        })
    }

    /// Broker `id`'s door, as Metadata lists it (`None`: not known).
    pub(crate) fn door(&self, id: u64) -> Option<String> {
        if id == self.settings.broker_id as u64 {
            return Some(
                self.settings
                    .advertise
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:9092".into()),
            );
        }
        self.settings.doors.as_ref().and_then(|d| (d.0)(id))
    }

    pub(crate) fn broker(&self, id: u64, at: &str) -> metadata_response::MetadataResponseBroker {
        let (host, port) = at.rsplit_once(':').unwrap_or((at, "9092"));
        let mut b = metadata_response::MetadataResponseBroker::default();
        b.node_id = BrokerId(id as i32);
        b.host = StrBytes::from_string(host.trim_start_matches('[').trim_end_matches(']').to_owned());
        b.port = port.parse().unwrap_or(9092);
        b
    }

    async fn metadata(&self, cx: &Cx<'_, H::Session>, m: MetadataRequest) -> MetadataResponse {
        let mut r = MetadataResponse::default();
        // Every broker a partition names, this one first.
        let mut named = std::collections::BTreeSet::from([self.settings.broker_id as u64]);
        r.cluster_id = Some(StrBytes::from_static_str("felix"));
        r.controller_id = BrokerId(self.settings.broker_id);
        let ns = &self.settings.namespace;
        // v0: an empty list is every topic; later, null is.
        let asked: Option<Vec<String>> = match m.topics {
            None => None,
            Some(t) if t.is_empty() && cx.version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.as_str().to_owned()))
                    .collect(),
            ),
        };
        let infos = |streams: Vec<StreamInfo>| -> Vec<StreamInfo> {
            streams
                .into_iter()
                .filter(|s| s.kind != StreamKind::Cache)
                .collect()
        };
        match asked {
            None => {
                let all = match self
                    .ask(cx.session, Message::Metadata { streams: Vec::new() })
                    .await
                {
                    Ok(Message::MetadataReply { streams, .. }) => infos(streams),
                    _ => Vec::new(),
                };
                for s in &all {
                    if let Some(t) = names::topic_of(cx.tenant, ns, &s.name) {
                        r.topics.push(self.topic_metadata(t, Some(s), &mut named));
                    }
                }
            }
            Some(topics) => {
                let create = self.settings.auto_create_partitions > 0
                    && (cx.version < 4 || m.allow_auto_topic_creation);
                for t in topics {
                    let stream = match self.stream(cx.tenant, &t) {
                        Ok(s) => s,
                        Err(why) => {
                            let mut mt = self.topic_metadata(&t, None, &mut named);
                            mt.error_code = INVALID_TOPIC_EXCEPTION;
                            tracing::debug!(topic = t, why, "kafka: metadata for a name Felix cannot hold");
                            r.topics.push(mt);
                            continue;
                        }
                    };
                    let mut found = self.describe_one(cx.session, &stream).await;
                    if let (Err(UNKNOWN_TOPIC_OR_PARTITION), true) = (&found, create) {
                        let config = StreamConfig::stream(
                            &stream,
                            self.settings.auto_create_partitions,
                            Durability::Always,
                        );
                        match self.ask(cx.session, Message::StreamCreate(config)).await {
                            Ok(_) => found = self.describe_one(cx.session, &stream).await,
                            Err(e) => found = Err(code_of(&e)),
                        }
                    }
                    match found {
                        Ok(info) => r.topics.push(self.topic_metadata(&t, Some(&info), &mut named)),
                        Err(code) => {
                            let mut mt = self.topic_metadata(&t, None, &mut named);
                            mt.error_code = code;
                            r.topics.push(mt);
                        }
                    }
                }
            }
        }
        for id in named {
            if let Some(at) = self.door(id) {
                r.brokers.push(self.broker(id, &at));
            }
        }
        // What a client may try, not what it will be allowed: Felix's own
        // RBAC decides each request, as Kafka does without an authorizer.
        if cx.version >= 8 && m.include_topic_authorized_operations {
            for t in r.topics.iter_mut().filter(|t| t.error_code == 0) {
                t.topic_authorized_operations = TOPIC_OPERATIONS_SERVED;
            }
        }
        if (8..=10).contains(&cx.version) && m.include_cluster_authorized_operations {
            r.cluster_authorized_operations = CLUSTER_OPERATIONS_SERVED;
        }
        r
    }

    async fn describe_one(&self, session: &H::Session, stream: &str) -> Result<StreamInfo, i16> {
        match self
            .ask(
                session,
                Message::Metadata {
                    streams: vec![stream.to_owned()],
                },
            )
            .await
        {
            Ok(Message::MetadataReply { streams, .. }) => streams
                .into_iter()
                .find(|s| s.name == stream && s.kind != StreamKind::Cache)
                .ok_or(UNKNOWN_TOPIC_OR_PARTITION),
            Ok(_) => Err(UNKNOWN_SERVER_ERROR),
            Err(e) => Err(code_of(&e)),
        }
    }

    fn topic_metadata(
        &self,
        topic: &str,
        info: Option<&StreamInfo>,
        named: &mut std::collections::BTreeSet<u64>,
    ) -> metadata_response::MetadataResponseTopic {
        let mut mt = metadata_response::MetadataResponseTopic::default();
        mt.name = Some(topic_name(topic));
        let me = self.settings.broker_id as u64;
        let Some(info) = info else {
            return mt;
        };
        for s in &info.shards {
            let mut p = metadata_response::MetadataResponsePartition::default();
            p.partition_index = s.shard as i32;
            p.leader_epoch = -1;
            let view = match &self.settings.doors {
                Some(_) => partition_view(me, s, &|b| self.door(b)),
                // One broker: it leads everything it holds.
                None => PartitionView {
                    leader: Some(me),
                    replicas: vec![me],
                },
            };
            let ids: Vec<BrokerId> = view.replicas.iter().map(|&b| BrokerId(b as i32)).collect();
            named.extend(view.replicas.iter().copied());
            match view.leader {
                Some(l) => {
                    named.insert(l);
                    p.leader_id = BrokerId(l as i32);
                }
                None => {
                    p.leader_id = BrokerId(-1);
                    p.error_code = 5; // LEADER_NOT_AVAILABLE
                }
            }
            p.replica_nodes = ids.clone();
            p.isr_nodes = ids;
            mt.partitions.push(p);
        }
        mt
    }

    async fn produce(&self, cx: &Cx<'_, H::Session>, p: ProduceRequest) -> Option<ProduceResponse> {
        let ack = match p.acks {
            0 => Some(AckLevel::None),
            1 => Some(AckLevel::Leader),
            -1 => Some(AckLevel::Quorum),
            _ => None,
        };
        let now_ms = (self.clock)();
        let mut r = ProduceResponse::default();
        for t in p.topic_data {
            let mut tr = produce_response::TopicProduceResponse::default();
            let stream = self.stream(cx.tenant, t.name.0.as_str());
            for part in t.partition_data {
                let mut pr = produce_response::PartitionProduceResponse::default();
                pr.index = part.index;
                pr.base_offset = -1;
                let outcome = match (&stream, ack) {
                    (Err(_), _) => Err((
                        INVALID_TOPIC_EXCEPTION,
                        "the topic name is not one Felix can hold".to_owned(),
                    )),
                    (_, None) => Err((INVALID_REQUIRED_ACKS, format!("acks={} (0, 1 or -1)", p.acks))),
                    (Ok(stream), Some(ack)) => {
                        self.produce_one(cx.session, stream, part.index, part.records, ack, now_ms)
                            .await
                    }
                };
                match outcome {
                    Ok(base) => pr.base_offset = base,
                    Err((code, why)) => {
                        pr.error_code = code;
                        pr.error_message = Some(StrBytes::from_string(why));
                    }
                }
                tr.partition_responses.push(pr);
            }
            tr.name = t.name;
            r.responses.push(tr);
        }
        (ack != Some(AckLevel::None)).then_some(r)
    }

    async fn produce_one(
        &self,
        session: &H::Session,
        stream: &str,
        partition: i32,
        records: Option<Bytes>,
        ack: AckLevel,
        now_ms: i64,
    ) -> Result<i64, (i16, String)> {
        let Ok(shard) = u32::try_from(partition) else {
            return Err((UNKNOWN_TOPIC_OR_PARTITION, format!("partition {partition}")));
        };
        let records = records.ok_or((
            records::RecordsError::Invalid(String::new()).code(),
            "no records".to_owned(),
        ))?;
        let parsed = records::parse(records, now_ms).map_err(|e| (e.code(), e.to_string()))?;
        let idem = crate::idem::of(&parsed).map_err(|e| (e.code(), e.to_string()))?;
        if let Some((producer, base, _)) = idem {
            let code = self.sequences.check(producer, stream, shard, base);
            if code != 0 {
                return Err((
                    code,
                    format!("sequence {base} leaves a gap after this producer's last batch"),
                ));
            }
        }
        let felix_producer = idem.map(|(p, base, _)| (p, base as u64));
        let batch = records::to_felix(&parsed, felix_producer).map_err(|e| (e.code(), e.to_string()))?;
        let (producer_id, sequence) = felix_producer.unwrap_or((0, 0));
        let m = Message::Publish {
            stream: stream.to_owned(),
            shard: Some(shard),
            ack,
            producer_id,
            sequence,
            batch: Bytes::from(batch),
        };
        let written = |next_seq: Option<i32>| {
            if let (Some((p, _, _)), Some(next)) = (idem, next_seq) {
                self.sequences.written(p, stream, shard, next);
            }
        };
        let next_seq = idem.map(|(_, base, count)| crate::idem::seq_add(base, i64::from(count)));
        match self.ask(session, m).await {
            Ok(Message::PublishAck { base_offset, .. }) => {
                written(next_seq);
                Ok(base_offset as i64)
            }
            Ok(Message::Done) => {
                written(next_seq);
                Ok(-1)
            }
            Ok(other) => Err((UNKNOWN_SERVER_ERROR, format!("unexpected reply {other:?}"))),
            // The shard's windows hold a later batch of this producer: this
            // one was written before (Kafka's answer for an old retry),
            // unless it is the very batch this door expects next, which
            // means the sequence wrapped: the producer must start afresh.
            Err(ErrorReply::InvalidRequest(why)) if idem.is_some() && why.contains(BEHIND) => {
                let (p, base, _) = idem.expect("checked");
                if self.sequences.is_due(p, stream, shard, base) {
                    Err((crate::idem::UNKNOWN_PRODUCER_ID, why))
                } else {
                    Err((crate::idem::DUPLICATE_SEQUENCE_NUMBER, why))
                }
            }
            Err(e) => Err((code_of(&e), e.to_string())),
        }
    }

    /// Each shard's figures, by shard, or the error for the whole topic.
    async fn shard_stats(&self, session: &H::Session, stream: &str) -> Result<Vec<ShardStats>, i16> {
        match self
            .ask(
                session,
                Message::StreamDescribe {
                    name: stream.to_owned(),
                },
            )
            .await
        {
            Ok(Message::StreamDescription { config, shards }) if config.kind != StreamKind::Cache => {
                Ok(shards)
            }
            Ok(_) => Err(UNKNOWN_TOPIC_OR_PARTITION),
            Err(e) => Err(code_of(&e)),
        }
    }

    /// A topic's stream and its shards' figures (or the error for the
    /// whole topic), as Fetch and ListOffsets start from.
    async fn topic_stats(
        &self,
        cx: &Cx<'_, H::Session>,
        topic: &str,
    ) -> (Result<String, &'static str>, Result<Vec<ShardStats>, i16>) {
        let stream = self.stream(cx.tenant, topic);
        let stats = match &stream {
            Ok(s) => self.shard_stats(cx.session, s).await,
            Err(_) => Err(INVALID_TOPIC_EXCEPTION),
        };
        (stream, stats)
    }

    async fn subscribe(
        &self,
        session: &H::Session,
        stream: &str,
        shard: u32,
        start: Start,
    ) -> Result<Box<dyn PushSource>, i16> {
        let m = Message::Subscribe {
            stream: stream.to_owned(),
            shards: vec![shard],
            start,
            durable: None,
            credit_bytes: 0,
        };
        match self.handler.request(session, m).await {
            Reply::Subscription(s) => Ok(s),
            Reply::Message(Message::Error(e)) => Err(code_of(&e)),
            _ => Err(UNKNOWN_SERVER_ERROR),
        }
    }

    async fn fetch(&self, cx: &Cx<'_, H::Session>, f: FetchRequest) -> FetchResponse {
        let wait = Duration::from_millis((f.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
        let deadline = tokio::time::Instant::now() + wait;
        let budget_max = (f.max_bytes.max(1) as usize).min(FETCH_BYTES_MAX);
        let min_bytes = f.min_bytes.max(0) as usize;
        let mut r = FetchResponse::default();
        // (topic index, partition index) of partitions at their end, with
        // the stream and where to wait from.
        let mut waiting: Vec<(usize, usize, String, u32, u64, usize)> = Vec::new();
        let mut total = 0usize;
        for t in f.topics {
            let mut tr = fetch_response::FetchableTopicResponse::default();
            let (stream, stats) = self.topic_stats(cx, t.topic.0.as_str()).await;
            for p in t.partitions {
                let mut pd = fetch_response::PartitionData::default();
                pd.partition_index = p.partition;
                // Empty, not null: librdkafka refuses a null record set.
                pd.records = Some(Bytes::new());
                let st = match partition_stats(&stats, p.partition) {
                    Ok(st) => st,
                    Err(code) => {
                        pd.error_code = code;
                        tr.partitions.push(pd);
                        continue;
                    }
                };
                pd.high_watermark = st.next as i64;
                pd.last_stable_offset = st.next as i64;
                pd.log_start_offset = st.earliest as i64;
                let at = p.fetch_offset;
                if at < st.earliest as i64 {
                    pd.error_code = OFFSET_OUT_OF_RANGE;
                    tr.partitions.push(pd);
                    continue;
                }
                let stream = stream.as_ref().expect("stats came from a stream");
                let room = budget_max.saturating_sub(total);
                let part_max = (p.partition_max_bytes.max(1) as usize).min(room.max(1));
                let past = at > st.next as i64;
                if !past && (at == st.next as i64 || (total > 0 && room == 0)) {
                    let (ti, pi) = (r.responses.len(), tr.partitions.len());
                    tr.partitions.push(pd);
                    if at == st.next as i64 {
                        waiting.push((ti, pi, stream.clone(), st.shard, at as u64, part_max));
                    }
                    continue;
                }
                // Past what this replica holds: a follower, or a leader
                // elected moments ago that has not applied all it will
                // serve. The broker judges it (NOT_LEADER_OR_FOLLOWER, a
                // read once caught up, or OFFSET_OUT_OF_RANGE), within the
                // fetch's own deadline.
                let within = if past {
                    deadline.saturating_duration_since(tokio::time::Instant::now())
                } else {
                    Duration::from_millis(FETCH_WAIT_MS_MAX)
                };
                match self
                    .read_now(cx.session, stream, st.shard, at as u64, part_max, within)
                    .await
                {
                    Ok(t) => {
                        total += t.bytes.len();
                        pd.records = Some(t.bytes.freeze());
                    }
                    Err(code) => pd.error_code = code,
                }
                tr.partitions.push(pd);
            }
            tr.topic = t.topic;
            r.responses.push(tr);
        }
        if total >= min_bytes.max(1) || waiting.is_empty() || wait.is_zero() {
            return r;
        }
        // Long poll: every partition at its end waits, together, until one
        // has records or the deadline passes.
        let mut set = tokio::task::JoinSet::new();
        for (ti, pi, stream, shard, at, max) in waiting {
            let source = match self
                .subscribe(cx.session, &stream, shard, Start::Offset(at))
                .await
            {
                Ok(s) => s,
                Err(_) => continue,
            };
            set.spawn(async move {
                let mut source = source;
                let got = tokio::time::timeout_at(deadline, source.next_push(max as u64)).await;
                (ti, pi, got)
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((ti, pi, Ok(Some(Ok(push))))) = done else {
                continue;
            };
            let mut t = Transcoded::default();
            if records::from_felix(push.batches, &mut t).is_ok() {
                total += t.bytes.len();
                r.responses[ti].partitions[pi].records = Some(t.bytes.freeze());
            }
            if total >= min_bytes.max(1) {
                break;
            }
        }
        set.abort_all();
        r
    }

    /// Records of a shard from `at`, which the shard holds.
    async fn read_now(
        &self,
        session: &H::Session,
        stream: &str,
        shard: u32,
        at: u64,
        max: usize,
        within: Duration,
    ) -> Result<Transcoded, i16> {
        let mut source = self.subscribe(session, stream, shard, Start::Offset(at)).await?;
        let mut t = Transcoded::default();
        // When the shard holds `at` a push is ready; `within` bounds the
        // wait for a shard that lost it meanwhile (retention) or that has
        // nothing past it yet, which answers empty.
        match tokio::time::timeout(within, source.next_push(max as u64)).await {
            Ok(Some(Ok(push))) => {
                records::from_felix(push.batches, &mut t).map_err(|e| {
                    tracing::error!(stream, shard, error = %e, "kafka: a stored batch could not be transcoded");
                    UNKNOWN_SERVER_ERROR
                })?;
                Ok(t)
            }
            Ok(Some(Err(e))) => Err(code_of(&e)),
            Ok(None) | Err(_) => Ok(t),
        }
    }

    async fn list_offsets(&self, cx: &Cx<'_, H::Session>, l: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut r = ListOffsetsResponse::default();
        for t in l.topics {
            let mut tr = list_offsets_response::ListOffsetsTopicResponse::default();
            let (stream, stats) = self.topic_stats(cx, t.name.0.as_str()).await;
            for p in t.partitions {
                let mut pr = list_offsets_response::ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                pr.leader_epoch = -1;
                match (partition_stats(&stats, p.partition_index), p.timestamp) {
                    (Err(code), _) => pr.error_code = code,
                    (Ok(st), -2) => pr.offset = st.earliest as i64,
                    (Ok(st), -1) => pr.offset = st.next as i64,
                    (Ok(_), ts) if ts < 0 => pr.error_code = INVALID_REQUEST,
                    (Ok(st), ts) => {
                        if st.next > st.earliest {
                            let stream = stream.as_ref().expect("stats came from a stream");
                            match self.first_at_or_after(cx.session, stream, st.shard, ts).await {
                                Ok(Some((offset, at))) => {
                                    pr.offset = offset as i64;
                                    pr.timestamp = at;
                                }
                                Ok(None) => {}
                                Err(code) => pr.error_code = code,
                            }
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            tr.name = t.name;
            r.topics.push(tr);
        }
        r
    }

    /// The first record of a shard timestamped at or after `ts`, by the
    /// shard's time index (what a subscription from a time starts at).
    async fn first_at_or_after(
        &self,
        session: &H::Session,
        stream: &str,
        shard: u32,
        ts: i64,
    ) -> Result<Option<(u64, i64)>, i16> {
        let mut source = self.subscribe(session, stream, shard, Start::Time(ts)).await?;
        let push = match tokio::time::timeout(
            Duration::from_millis(LIST_OFFSETS_WAIT_MS),
            source.next_push(1),
        )
        .await
        {
            Ok(Some(Ok(p))) => p,
            Ok(Some(Err(e))) => return Err(code_of(&e)),
            // Nothing at or after it yet.
            Ok(None) | Err(_) => return Ok(None),
        };
        let mut rest = push.batches;
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            if len > rest.len() {
                break;
            }
            let Ok(batch) = felix_log::batch::Batch::new(rest.split_to(len)) else {
                return Err(UNKNOWN_SERVER_ERROR);
            };
            let Ok(recs) = batch.records() else {
                return Err(UNKNOWN_SERVER_ERROR);
            };
            for rec in recs.flatten() {
                if rec.timestamp_ms >= ts {
                    return Ok(Some((rec.offset.0, rec.timestamp_ms)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(leader: Option<u64>, replicas: &[u64]) -> ShardInfo {
        ShardInfo {
            shard: 0,
            leader,
            replicas: replicas.to_vec(),
        }
    }

    #[test]
    fn a_partition_is_led_by_its_shards_leader_when_its_door_is_known() {
        let doors = |b: u64| (b != 4).then(|| format!("door-{b}:9092"));
        let v = partition_view(1, &shard(Some(3), &[1, 3, 4]), &doors);
        assert_eq!(
            v,
            PartitionView {
                leader: Some(3),
                replicas: vec![1, 3]
            }
        );
        // A leader whose door no registry entry names yet: clients are told
        // to ask again rather than sent to a broker they cannot reach.
        let v = partition_view(1, &shard(Some(4), &[1, 3, 4]), &doors);
        assert_eq!(v.leader, None);
        let v = partition_view(1, &shard(None, &[1, 3]), &doors);
        assert_eq!(v.leader, None);
        assert_eq!(v.replicas, vec![1, 3]);
    }
}
