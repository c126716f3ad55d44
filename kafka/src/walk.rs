//! Bounds a request body before `kafka-protocol` decodes it.
//!
//! The crate's decoders reserve an array's declared length before reading
//! a single element (`Vec::with_capacity(n)` for `n` up to 2^31), so a
//! 20-byte request could ask for hundreds of gigabytes. This walk reads
//! each supported request's shape (the versions in [`crate::apis`]),
//! checks every declared length against the bytes that are really there,
//! and counts array elements against [`ELEMENTS_MAX`]; only a body that
//! passes is handed to the decoder. Sans-IO: bytes in, a verdict out.

use kafka_protocol::messages::ApiKey;

use crate::apis;

/// Array elements one request may declare, all arrays together: past it
/// the request is refused (a Metadata of 10,000 topics is 10,000; a
/// Produce to 1,000 partitions of 10 topics about 1,010).
pub const ELEMENTS_MAX: u32 = 65_536;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("the request ends early: {what} needs {need} more bytes, {left} are left")]
    Short {
        what: &'static str,
        need: u64,
        left: usize,
    },
    #[error("{what} has a negative length ({len})")]
    Negative { what: &'static str, len: i64 },
    #[error("the request declares more than {ELEMENTS_MAX} array elements")]
    TooManyElements,
    #[error("{left} bytes follow the request's last field")]
    Trailing { left: usize },
    #[error("{key:?} version {version} is not served here")]
    Unsupported { key: ApiKey, version: i16 },
}

struct Walk<'a> {
    b: &'a [u8],
    at: usize,
    elements: u32,
}

impl<'a> Walk<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }

    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), WalkError> {
        if n > self.left() as u64 {
            return Err(WalkError::Short {
                what,
                need: n,
                left: self.left(),
            });
        }
        self.at += n as usize;
        Ok(())
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WalkError> {
        let at = self.at;
        self.skip(N as u64, what)?;
        Ok(self.b[at..at + N].try_into().expect("N bytes"))
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, WalkError> {
        Ok(i16::from_be_bytes(self.fixed(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, WalkError> {
        Ok(i32::from_be_bytes(self.fixed(what)?))
    }

    fn uvarint(&mut self, what: &'static str) -> Result<u64, WalkError> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            let [b] = self.fixed::<1>(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WalkError::Negative { what, len: -1 })
    }

    /// STRING or NULLABLE_STRING (INT16 length, -1 null).
    fn string(&mut self, what: &'static str) -> Result<(), WalkError> {
        match self.i16(what)? {
            -1 => Ok(()),
            n if n < 0 => Err(WalkError::Negative { what, len: n.into() }),
            n => self.skip(n as u64, what),
        }
    }

    /// BYTES or NULLABLE_BYTES (INT32 length, -1 null).
    fn bytes(&mut self, what: &'static str) -> Result<(), WalkError> {
        match self.i32(what)? {
            -1 => Ok(()),
            n if n < 0 => Err(WalkError::Negative { what, len: n.into() }),
            n => self.skip(n as u64, what),
        }
    }

    /// COMPACT_STRING / COMPACT_NULLABLE_STRING (UNSIGNED_VARINT length + 1).
    fn compact_string(&mut self, what: &'static str) -> Result<(), WalkError> {
        match self.uvarint(what)? {
            0 => Ok(()),
            n => self.skip(n - 1, what),
        }
    }

    /// TAG_BUFFER: a count, then (tag, size, bytes) each.
    fn tags(&mut self) -> Result<(), WalkError> {
        let n = self.uvarint("tagged fields")?;
        self.count(n)?;
        for _ in 0..n {
            self.uvarint("a tag")?;
            let size = self.uvarint("a tagged field's size")?;
            self.skip(size, "a tagged field")?;
        }
        Ok(())
    }

    fn count(&mut self, n: u64) -> Result<(), WalkError> {
        // Every element is at least one byte, so a count above the bytes
        // left is a lie whatever the budget.
        if n > self.left() as u64 {
            return Err(WalkError::Short {
                what: "an array",
                need: n,
                left: self.left(),
            });
        }
        self.elements = self
            .elements
            .checked_add(n as u32)
            .filter(|&e| e <= ELEMENTS_MAX)
            .ok_or(WalkError::TooManyElements)?;
        Ok(())
    }

    /// ARRAY (INT32 count, -1 null), each element walked by `each`.
    fn array(
        &mut self,
        what: &'static str,
        mut each: impl FnMut(&mut Walk<'a>) -> Result<(), WalkError>,
    ) -> Result<(), WalkError> {
        let n = match self.i32(what)? {
            -1 => return Ok(()),
            n if n < 0 => return Err(WalkError::Negative { what, len: n.into() }),
            n => n as u64,
        };
        self.count(n)?;
        for _ in 0..n {
            each(self)?;
        }
        Ok(())
    }

    fn end(&self) -> Result<(), WalkError> {
        match self.left() {
            0 => Ok(()),
            left => Err(WalkError::Trailing { left }),
        }
    }
}

/// Checks `body` (the request after its header) as `key` at `version`.
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<(), WalkError> {
    if !apis::serves(key, version) {
        return Err(WalkError::Unsupported { key, version });
    }
    let mut w = Walk {
        b: body,
        at: 0,
        elements: 0,
    };
    let v = version;
    match key {
        ApiKey::ApiVersions => {
            if v >= 3 {
                w.compact_string("client_software_name")?;
                w.compact_string("client_software_version")?;
                w.tags()?;
            }
        }
        ApiKey::Metadata => {
            w.array("topics", |w| w.string("a topic name"))?;
            if v >= 4 {
                w.skip(1, "allow_auto_topic_creation")?;
            }
            if v >= 8 {
                w.skip(2, "include_*_authorized_operations")?;
            }
        }
        ApiKey::Produce => {
            w.string("transactional_id")?;
            w.skip(2 + 4, "acks and timeout_ms")?;
            w.array("topic_data", |w| {
                w.string("a topic name")?;
                w.array("partition_data", |w| {
                    w.skip(4, "a partition index")?;
                    w.bytes("records")
                })
            })?;
        }
        ApiKey::Fetch => {
            w.skip(4 * 4 + 1, "replica_id .. isolation_level")?;
            if v >= 7 {
                w.skip(8, "session_id and session_epoch")?;
            }
            w.array("topics", |w| {
                w.string("a topic name")?;
                w.array("partitions", |w| {
                    let per = 4 + (if v >= 9 { 4 } else { 0 }) + 8 + (if v >= 5 { 8 } else { 0 }) + 4;
                    w.skip(per, "a fetch partition")
                })
            })?;
            if v >= 7 {
                w.array("forgotten_topics_data", |w| {
                    w.string("a topic name")?;
                    w.array("partitions", |w| w.skip(4, "a partition index"))
                })?;
            }
            if v >= 11 {
                w.string("rack_id")?;
            }
        }
        ApiKey::ListOffsets => {
            w.skip(4, "replica_id")?;
            if v >= 2 {
                w.skip(1, "isolation_level")?;
            }
            w.array("topics", |w| {
                w.string("a topic name")?;
                w.array("partitions", |w| {
                    let per = 4 + (if v >= 4 { 4 } else { 0 }) + 8;
                    w.skip(per, "a list-offsets partition")
                })
            })?;
        }
        ApiKey::FindCoordinator => {
            w.string("key")?;
            if v >= 1 {
                w.skip(1, "key_type")?;
            }
        }
        ApiKey::JoinGroup => {
            w.string("group_id")?;
            w.skip(4, "session_timeout_ms")?;
            if v >= 1 {
                w.skip(4, "rebalance_timeout_ms")?;
            }
            w.string("member_id")?;
            if v >= 5 {
                w.string("group_instance_id")?;
            }
            w.string("protocol_type")?;
            w.array("protocols", |w| {
                w.string("a protocol name")?;
                w.bytes("a protocol's metadata")
            })?;
        }
        ApiKey::SyncGroup => {
            w.string("group_id")?;
            w.skip(4, "generation_id")?;
            w.string("member_id")?;
            if v >= 3 {
                w.string("group_instance_id")?;
            }
            w.array("assignments", |w| {
                w.string("a member id")?;
                w.bytes("an assignment")
            })?;
        }
        ApiKey::Heartbeat => {
            w.string("group_id")?;
            w.skip(4, "generation_id")?;
            w.string("member_id")?;
            if v >= 3 {
                w.string("group_instance_id")?;
            }
        }
        ApiKey::LeaveGroup => {
            w.string("group_id")?;
            if v >= 3 {
                w.array("members", |w| {
                    w.string("a member id")?;
                    w.string("a group instance id")
                })?;
            } else {
                w.string("member_id")?;
            }
        }
        ApiKey::OffsetCommit => {
            w.string("group_id")?;
            w.skip(4, "generation_id")?;
            w.string("member_id")?;
            if v >= 7 {
                w.string("group_instance_id")?;
            }
            if (2..=4).contains(&v) {
                w.skip(8, "retention_time_ms")?;
            }
            w.array("topics", |w| {
                w.string("a topic name")?;
                w.array("partitions", |w| {
                    let per = 4 + 8 + (if v >= 6 { 4 } else { 0 });
                    w.skip(per, "a committed partition")?;
                    w.string("committed metadata")
                })
            })?;
        }
        ApiKey::OffsetFetch => {
            w.string("group_id")?;
            w.array("topics", |w| {
                w.string("a topic name")?;
                w.array("partition_indexes", |w| w.skip(4, "a partition index"))
            })?;
        }
        ApiKey::ListGroups => {}
        ApiKey::InitProducerId => {
            w.string("transactional_id")?;
            w.skip(4, "transaction_timeout_ms")?;
        }
        ApiKey::CreateTopics => {
            w.array("topics", |w| {
                w.string("a topic name")?;
                w.skip(4 + 2, "num_partitions and replication_factor")?;
                w.array("assignments", |w| {
                    w.skip(4, "a partition index")?;
                    w.array("broker_ids", |w| w.skip(4, "a broker id"))
                })?;
                w.array("configs", |w| {
                    w.string("a config name")?;
                    w.string("a config value")
                })
            })?;
            w.skip(4, "timeout_ms")?;
            w.skip(1, "validate_only")?;
        }
        ApiKey::DeleteTopics => {
            w.array("topic_names", |w| w.string("a topic name"))?;
            w.skip(4, "timeout_ms")?;
        }
        ApiKey::DescribeConfigs => {
            w.array("resources", |w| {
                w.skip(1, "resource_type")?;
                w.string("resource_name")?;
                w.array("configuration_keys", |w| w.string("a config name"))
            })?;
            w.skip(1, "include_synonyms")?;
            if v >= 3 {
                w.skip(1, "include_documentation")?;
            }
        }
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            let incremental = key == ApiKey::IncrementalAlterConfigs;
            w.array("resources", |w| {
                w.skip(1, "resource_type")?;
                w.string("resource_name")?;
                w.array("configs", |w| {
                    w.string("a config name")?;
                    if incremental {
                        w.skip(1, "config_operation")?;
                    }
                    w.string("a config value")
                })
            })?;
            w.skip(1, "validate_only")?;
        }
        ApiKey::DeleteGroups => w.array("groups_names", |w| w.string("a group id"))?,
        ApiKey::DescribeGroups => {
            w.array("groups", |w| w.string("a group id"))?;
            if v >= 3 {
                w.skip(1, "include_authorized_operations")?;
            }
        }
        ApiKey::SaslHandshake => w.string("mechanism")?,
        ApiKey::SaslAuthenticate => w.bytes("auth_bytes")?,
        _ => return Err(WalkError::Unsupported { key, version }),
    }
    w.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{fetch_request, metadata_request, produce_request};
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encoded<T: Encodable>(m: &T, v: i16) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b, v).unwrap();
        b.to_vec()
    }

    fn topic(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.into()))
    }

    #[test]
    fn requests_the_crate_encodes_pass_at_every_served_version() {
        let mut produce = ProduceRequest::default();
        produce.acks = -1;
        let mut t = produce_request::TopicProduceData::default();
        t.name = topic("orders");
        let mut p = produce_request::PartitionProduceData::default();
        p.records = Some(bytes::Bytes::from_static(b"not walked into"));
        t.partition_data.push(p);
        produce.topic_data.push(t);
        for v in 3..=8 {
            check(ApiKey::Produce, v, &encoded(&produce, v)).unwrap();
        }
        let mut fetch = FetchRequest::default();
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = topic("orders");
        ft.partitions.push(fetch_request::FetchPartition::default());
        fetch.topics.push(ft);
        for v in 4..=11 {
            let mut f = fetch.clone();
            if v >= 7 {
                // Only v7 and later have forgotten topics.
                f.forgotten_topics_data
                    .push(fetch_request::ForgottenTopic::default());
            }
            check(ApiKey::Fetch, v, &encoded(&f, v)).unwrap();
        }
        let mut md = MetadataRequest::default();
        let mut mt = metadata_request::MetadataRequestTopic::default();
        mt.name = Some(topic("orders"));
        md.topics = Some(vec![mt]);
        for v in 0..=8 {
            check(ApiKey::Metadata, v, &encoded(&md, v)).unwrap();
        }
        group_requests_pass();
    }

    /// Every group request, at every served version, with an element in
    /// each array, passes as the crate encodes it.
    fn group_requests_pass() {
        use kafka_protocol::messages::*;
        let mut join = JoinGroupRequest::default();
        join.group_id = GroupId(StrBytes::from_static_str("g"));
        join.protocol_type = StrBytes::from_static_str("consumer");
        let mut p = join_group_request::JoinGroupRequestProtocol::default();
        p.name = StrBytes::from_static_str("range");
        p.metadata = bytes::Bytes::from_static(b"meta");
        join.protocols.push(p);
        let mut sync = SyncGroupRequest::default();
        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
        a.assignment = bytes::Bytes::from_static(b"a");
        sync.assignments.push(a);
        let mut leave = LeaveGroupRequest::default();
        leave.members.push(leave_group_request::MemberIdentity::default());
        let mut commit = OffsetCommitRequest::default();
        let mut ct = offset_commit_request::OffsetCommitRequestTopic::default();
        ct.name = topic("orders");
        let mut cp = offset_commit_request::OffsetCommitRequestPartition::default();
        cp.committed_metadata = Some(StrBytes::from_static_str("m"));
        ct.partitions.push(cp);
        commit.topics.push(ct);
        let mut fetch = OffsetFetchRequest::default();
        let mut ft = offset_fetch_request::OffsetFetchRequestTopic::default();
        ft.name = topic("orders");
        ft.partition_indexes = vec![0, 1];
        fetch.topics = Some(vec![ft]);
        let mut delete_groups = DeleteGroupsRequest::default();
        delete_groups
            .groups_names
            .push(GroupId(StrBytes::from_static_str("g")));
        let mut describe = DescribeGroupsRequest::default();
        describe.groups.push(GroupId(StrBytes::from_static_str("g")));
        let mut create = CreateTopicsRequest::default();
        let mut ct = create_topics_request::CreatableTopic::default();
        ct.name = topic("orders");
        let mut ra = create_topics_request::CreatableReplicaAssignment::default();
        ra.broker_ids.push(BrokerId(1));
        ct.assignments.push(ra);
        let mut cc = create_topics_request::CreatableTopicConfig::default();
        cc.name = StrBytes::from_static_str("retention.ms");
        cc.value = Some(StrBytes::from_static_str("1000"));
        ct.configs.push(cc);
        create.topics.push(ct);
        let mut delete = DeleteTopicsRequest::default();
        delete.topic_names.push(topic("orders"));
        let mut configs = DescribeConfigsRequest::default();
        let mut res = describe_configs_request::DescribeConfigsResource::default();
        res.configuration_keys = Some(vec![StrBytes::from_static_str("retention.ms")]);
        configs.resources.push(res);
        let mut alter = AlterConfigsRequest::default();
        let mut ar = alter_configs_request::AlterConfigsResource::default();
        let mut ac = alter_configs_request::AlterableConfig::default();
        ac.name = StrBytes::from_static_str("retention.ms");
        ac.value = Some(StrBytes::from_static_str("1000"));
        ar.configs.push(ac);
        alter.resources.push(ar);
        let mut inc = IncrementalAlterConfigsRequest::default();
        let mut ir = incremental_alter_configs_request::AlterConfigsResource::default();
        let mut ic = incremental_alter_configs_request::AlterableConfig::default();
        ic.name = StrBytes::from_static_str("retention.bytes");
        ic.config_operation = 1;
        ir.configs.push(ic);
        inc.resources.push(ir);
        for &(key, lo, hi) in crate::apis::SERVED {
            for v in lo..=hi {
                let body = match key {
                    ApiKey::FindCoordinator => encoded(&FindCoordinatorRequest::default(), v),
                    ApiKey::JoinGroup => encoded(&join, v),
                    ApiKey::SyncGroup => encoded(&sync, v),
                    ApiKey::Heartbeat => encoded(&HeartbeatRequest::default(), v),
                    ApiKey::LeaveGroup if v >= 3 => encoded(&leave, v),
                    ApiKey::LeaveGroup => encoded(&LeaveGroupRequest::default(), v),
                    ApiKey::OffsetCommit => encoded(&commit, v),
                    ApiKey::OffsetFetch => encoded(&fetch, v),
                    ApiKey::ListGroups => encoded(&ListGroupsRequest::default(), v),
                    ApiKey::InitProducerId => encoded(&InitProducerIdRequest::default(), v),
                    ApiKey::CreateTopics => encoded(&create, v),
                    ApiKey::DeleteTopics => encoded(&delete, v),
                    ApiKey::DescribeConfigs => encoded(&configs, v),
                    ApiKey::AlterConfigs => encoded(&alter, v),
                    ApiKey::IncrementalAlterConfigs => encoded(&inc, v),
                    ApiKey::DescribeGroups => encoded(&describe, v),
                    ApiKey::DeleteGroups => encoded(&delete_groups, v),
                    _ => continue,
                };
                check(key, v, &body).unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
                crate::apis::decode(key, v, bytes::Bytes::from(body)).unwrap();
            }
        }
    }

    #[test]
    fn a_declared_length_beyond_the_body_is_refused_before_anything_is_reserved() {
        // Metadata v1 declaring 2^31 - 1 topics in a 4-byte body.
        let body = i32::MAX.to_be_bytes();
        assert!(matches!(
            check(ApiKey::Metadata, 1, &body),
            Err(WalkError::Short { what: "an array", .. })
        ));
        // Enough bytes, but more elements than a request may declare.
        let n = ELEMENTS_MAX + 1;
        let mut body = (n as i32).to_be_bytes().to_vec();
        for _ in 0..n {
            body.extend_from_slice(&(-1i16).to_be_bytes());
        }
        assert_eq!(check(ApiKey::Metadata, 1, &body), Err(WalkError::TooManyElements));
        // A string longer than what follows.
        let mut body = 1i32.to_be_bytes().to_vec();
        body.extend_from_slice(&100i16.to_be_bytes());
        body.extend_from_slice(b"short");
        assert!(matches!(
            check(ApiKey::Metadata, 1, &body),
            Err(WalkError::Short { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_unserved_versions_are_refused() {
        let mut body = 0i32.to_be_bytes().to_vec();
        body.push(0);
        assert_eq!(
            check(ApiKey::Metadata, 1, &body),
            Err(WalkError::Trailing { left: 1 })
        );
        assert!(matches!(
            check(ApiKey::Produce, 2, &[]),
            Err(WalkError::Unsupported { .. })
        ));
        assert!(matches!(
            check(ApiKey::CreateAcls, 0, &[]),
            Err(WalkError::Unsupported { .. })
        ));
    }

    proptest::proptest! {
        /// Whatever the bytes, the walk answers (never panics), and a body
        /// it passes decodes without the crate reserving past the bytes.
        #[test]
        fn any_bytes_get_a_verdict(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), which in 0usize..10) {
            let (key, v) = [
                (ApiKey::Metadata, 8), (ApiKey::Produce, 8), (ApiKey::Fetch, 11), (ApiKey::ListOffsets, 5),
                (ApiKey::JoinGroup, 5), (ApiKey::SyncGroup, 3), (ApiKey::OffsetCommit, 7), (ApiKey::OffsetFetch, 5),
                (ApiKey::LeaveGroup, 3), (ApiKey::DescribeGroups, 4),
            ][which];
            if check(key, v, &body).is_ok() {
                let _ = crate::apis::decode(key, v, bytes::Bytes::from(body));
            }
        }
    }
}
