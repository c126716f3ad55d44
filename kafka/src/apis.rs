//! Which APIs and versions the door serves, and decoding a request once
//! [`crate::walk`] has bounded it.
//!
//! Every served version predates Kafka's "flexible" encoding except
//! ApiVersions v3, which clients try first (KIP-511). The ranges start
//! where RecordBatch v2 starts (Produce v3, Fetch v4): older clients that
//! only speak message sets v0/v1 are refused at ApiVersions.

use bytes::Bytes;
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::Decodable;

/// (API, lowest version, highest version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 8),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::ListOffsets, 1, 5),
    (ApiKey::Metadata, 0, 8),
    // The classic group protocol and topic administration, each up to
    // its last version before the flexible encoding and from the first
    // version `kafka-protocol` decodes.
    (ApiKey::OffsetCommit, 2, 7),
    (ApiKey::OffsetFetch, 1, 5),
    (ApiKey::FindCoordinator, 0, 2),
    (ApiKey::JoinGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 3),
    (ApiKey::LeaveGroup, 0, 3),
    (ApiKey::SyncGroup, 0, 3),
    (ApiKey::DescribeGroups, 0, 4),
    (ApiKey::ListGroups, 0, 2),
    (ApiKey::DeleteGroups, 0, 1),
    (ApiKey::InitProducerId, 0, 1),
    (ApiKey::CreateTopics, 2, 4),
    (ApiKey::DeleteTopics, 1, 3),
    (ApiKey::DescribeConfigs, 1, 3),
    (ApiKey::AlterConfigs, 0, 1),
    (ApiKey::IncrementalAlterConfigs, 0, 0),
    // librdkafka counts SASL as supported only if v0 is; after a v0
    // handshake the exchange is bare size-prefixed frames (`server`).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::SaslAuthenticate, 0, 1),
];

/// Whether `key` at `version` is served.
pub fn serves(key: ApiKey, version: i16) -> bool {
    SERVED
        .iter()
        .any(|&(k, lo, hi)| k == key && (lo..=hi).contains(&version))
}

/// The highest version of `key` served, if any.
pub fn highest(key: ApiKey) -> Option<i16> {
    SERVED.iter().find(|&&(k, _, _)| k == key).map(|&(_, _, hi)| hi)
}

/// A decoded request of a served API.
#[derive(Debug, Clone)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    SaslHandshake(SaslHandshakeRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    InitProducerId(InitProducerIdRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
}

/// Decodes `body`, which [`crate::walk::check`] has passed for `key` at
/// `version`. Errors are the crate's (text that is not UTF-8, say).
pub fn decode(key: ApiKey, version: i16, body: Bytes) -> Result<Request, String> {
    fn d<T: Decodable>(mut b: Bytes, version: i16) -> Result<T, String> {
        T::decode(&mut b, version).map_err(|e| e.to_string())
    }
    let v = version;
    Ok(match key {
        ApiKey::ApiVersions => Request::ApiVersions(d(body, v)?),
        ApiKey::Metadata => Request::Metadata(d(body, v)?),
        ApiKey::Produce => Request::Produce(d(body, v)?),
        ApiKey::Fetch => Request::Fetch(d(body, v)?),
        ApiKey::ListOffsets => Request::ListOffsets(d(body, v)?),
        ApiKey::SaslHandshake => Request::SaslHandshake(d(body, v)?),
        ApiKey::SaslAuthenticate => Request::SaslAuthenticate(d(body, v)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(d(body, v)?),
        ApiKey::JoinGroup => Request::JoinGroup(d(body, v)?),
        ApiKey::SyncGroup => Request::SyncGroup(d(body, v)?),
        ApiKey::Heartbeat => Request::Heartbeat(d(body, v)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(d(body, v)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(d(body, v)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(d(body, v)?),
        ApiKey::ListGroups => Request::ListGroups(d(body, v)?),
        ApiKey::DescribeGroups => Request::DescribeGroups(d(body, v)?),
        ApiKey::DeleteGroups => Request::DeleteGroups(d(body, v)?),
        ApiKey::InitProducerId => Request::InitProducerId(d(body, v)?),
        ApiKey::CreateTopics => Request::CreateTopics(d(body, v)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(d(body, v)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(d(body, v)?),
        ApiKey::AlterConfigs => Request::AlterConfigs(d(body, v)?),
        ApiKey::IncrementalAlterConfigs => Request::IncrementalAlterConfigs(d(body, v)?),
        other => return Err(format!("{other:?} is not served")),
    })
}
