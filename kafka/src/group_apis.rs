//! The group APIs: FindCoordinator, membership and committed offsets over
//! the door's [`crate::coordinator`] and the namespace's offsets cache
//! ([`crate::offsets`]).
//!
//! A namespace's coordinator is the leader of its offsets cache's one
//! shard: every broker's door answers FindCoordinator with that leader's
//! door, and a group request reaching any other broker is answered
//! NOT_COORDINATOR, so clients follow the shard's leadership as it moves.

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use felix_client::server::Handler;
use felix_client::wire::message::SCAN_KEYS_MAX;
use felix_client::wire::{ErrorReply, Message, ShardInfo, StreamConfig};
use felix_model::{Durability, StreamKind};
use kafka_protocol::messages::{
    delete_groups_response, describe_groups_response, join_group_response, leave_group_response,
    list_groups_response, offset_commit_response, offset_fetch_response, BrokerId, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::coordinator::answer;
use crate::exec::{code_of, partition_view, Cx, Door};
use crate::group::{self, Answer, GroupKey};
use crate::offsets::{self, Committed};

const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const NON_EMPTY_GROUP: i16 = 68;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REQUEST: i16 = 42;
/// Keys one OffsetFetch of a whole group reads (its partitions).
pub const FETCH_ALL_KEYS_MAX: usize = 65_536;
/// Groups one ListGroups names from the offsets cache (as many as a door
/// holds in memory).
pub const LIST_GROUPS_MAX: usize = group::GROUPS_MAX;
/// Scans one ListGroups may make of the offsets cache.
const LIST_GROUPS_SCANS_MAX: usize = 1_024;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// The `group.instance.id` a request names, if any (a static member).
fn instance(i: &Option<StrBytes>) -> Option<&str> {
    i.as_ref().map(|i| i.as_str())
}

impl<H: Handler> Door<H> {
    fn offsets_cache(&self, tenant: &str) -> String {
        format!("{tenant}/{}/{}", self.settings.namespace, offsets::CACHE_NAME)
    }

    fn group_key(cx: &Cx<'_, H::Session>, group: &GroupId) -> GroupKey {
        (cx.tenant.to_owned(), group.0.as_str().to_owned())
    }

    /// The offsets cache's shard, if the cache exists.
    async fn offsets_shard(&self, cx: &Cx<'_, H::Session>) -> Result<Option<ShardInfo>, i16> {
        let name = self.offsets_cache(cx.tenant);
        match self
            .ask(
                cx.session,
                Message::Metadata {
                    streams: vec![name.clone()],
                },
            )
            .await
        {
            Ok(Message::MetadataReply { streams, .. }) => Ok(streams
                .into_iter()
                .find(|s| s.name == name && s.kind == StreamKind::Cache)
                .and_then(|s| s.shards.into_iter().next())),
            Ok(_) => Err(crate::exec::UNKNOWN_SERVER_ERROR),
            Err(ErrorReply::UnknownStream(_)) => Ok(None),
            Err(e) => Err(code_of(&e)),
        }
    }

    /// The coordinator's broker id for the connection's namespace, or
    /// the error a client retries on.
    async fn coordinator_id(&self, cx: &Cx<'_, H::Session>) -> Result<u64, i16> {
        let me = self.settings.broker_id as u64;
        let shard = self.offsets_shard(cx).await?.ok_or(COORDINATOR_NOT_AVAILABLE)?;
        if self.settings.doors.is_none() {
            return Ok(me);
        }
        partition_view(me, &shard, &|b| self.door(b))
            .leader
            .ok_or(COORDINATOR_NOT_AVAILABLE)
    }

    /// NONE if this broker coordinates the connection's groups.
    async fn here(&self, cx: &Cx<'_, H::Session>) -> i16 {
        match self.coordinator_id(cx).await {
            Ok(id) if id == self.settings.broker_id as u64 => group::NONE,
            Ok(_) | Err(COORDINATOR_NOT_AVAILABLE) => NOT_COORDINATOR,
            Err(code) => code,
        }
    }

    pub(crate) async fn find_coordinator(
        &self,
        cx: &Cx<'_, H::Session>,
        r: FindCoordinatorRequest,
    ) -> FindCoordinatorResponse {
        let mut resp = FindCoordinatorResponse::default();
        resp.node_id = BrokerId(-1);
        let fail = |mut resp: FindCoordinatorResponse, code: i16, why: &str| {
            resp.error_code = code;
            resp.error_message = Some(s(why));
            resp
        };
        if r.key_type != 0 {
            return fail(resp, INVALID_REQUEST, "transactions are not served by this door");
        }
        if r.key.len() > offsets::GROUP_ID_BYTES_MAX {
            return fail(resp, group::INVALID_GROUP_ID, "the group id is too long");
        }
        let mut created = None;
        if let Ok(None) = self.offsets_shard(cx).await {
            let mut config = StreamConfig::stream(
                &self.offsets_cache(cx.tenant),
                offsets::CACHE_SHARDS,
                Durability::Always,
            );
            config.kind = StreamKind::Cache;
            // Another door may make it first: whether it exists is what
            // counts, so the error is shown only if it still does not.
            created = self.ask(cx.session, Message::StreamCreate(config)).await.err();
        }
        let id = match (self.coordinator_id(cx).await, created) {
            (Ok(id), _) => id,
            (Err(COORDINATOR_NOT_AVAILABLE), Some(e)) => return fail(resp, code_of(&e), &e.to_string()),
            (Err(code), _) => return fail(resp, code, "the coordinator has no leader yet; ask again"),
        };
        let Some(at) = self.door(id) else {
            return fail(
                resp,
                COORDINATOR_NOT_AVAILABLE,
                "the coordinator's door is not known yet",
            );
        };
        let b = self.broker(id, &at);
        resp.node_id = b.node_id;
        resp.host = b.host;
        resp.port = b.port;
        resp
    }

    pub(crate) async fn join_group(&self, cx: &Cx<'_, H::Session>, r: JoinGroupRequest) -> JoinGroupResponse {
        let mut resp = JoinGroupResponse::default();
        resp.generation_id = -1;
        let here = self.here(cx).await;
        if here != group::NONE {
            resp.error_code = here;
            resp.member_id = r.member_id;
            return resp;
        }
        let key = Self::group_key(cx, &r.group_id);
        let j = group::Join {
            member_id: r.member_id.as_str().to_owned(),
            client_id: cx.client_id.to_owned(),
            client_host: format!("/{}", cx.peer.ip()),
            protocol_type: r.protocol_type.as_str().to_owned(),
            protocols: r
                .protocols
                .into_iter()
                .map(|p| (p.name.as_str().to_owned(), p.metadata))
                .collect(),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: r.rebalance_timeout_ms,
            id_required: cx.version >= 4,
            instance_id: instance(&r.group_instance_id).map(str::to_owned),
        };
        let within = j.rebalance_timeout_ms.clamp(0, group::REBALANCE_TIMEOUT_MS_MAX) as u64;
        let now = (self.clock)();
        let joined = match self.coordinator.run(|g| g.join(now, &key, j)) {
            Err(j) => *j,
            Ok(rx) => match answer(rx, within).await {
                Some(Answer::Join(j)) => j,
                _ => group::Joined {
                    error: group::REBALANCE_IN_PROGRESS,
                    generation: -1,
                    ..group::Joined::default()
                },
            },
        };
        tracing::debug!(group = %key.1, member = %joined.member_id, error = joined.error, generation = joined.generation, leader = %joined.leader, members = joined.members.len(), "kafka: JoinGroup answered");
        resp.error_code = joined.error;
        resp.generation_id = joined.generation;
        resp.protocol_type = joined.protocol_type.as_deref().map(s);
        resp.protocol_name = joined.protocol.as_deref().map(s);
        resp.leader = s(&joined.leader);
        resp.member_id = s(&joined.member_id);
        resp.members = joined
            .members
            .into_iter()
            .map(|(id, meta)| {
                let mut m = join_group_response::JoinGroupResponseMember::default();
                m.member_id = s(&id);
                m.metadata = meta;
                m
            })
            .collect();
        resp
    }

    pub(crate) async fn sync_group(&self, cx: &Cx<'_, H::Session>, r: SyncGroupRequest) -> SyncGroupResponse {
        let mut resp = SyncGroupResponse::default();
        let here = self.here(cx).await;
        if here != group::NONE {
            resp.error_code = here;
            return resp;
        }
        let key = Self::group_key(cx, &r.group_id);
        let assignments: Vec<(String, Bytes)> = r
            .assignments
            .into_iter()
            .map(|a| (a.member_id.as_str().to_owned(), a.assignment))
            .collect();
        let now = (self.clock)();
        let member = match self
            .coordinator
            .with(|g| g.identify(&key, r.member_id.as_str(), instance(&r.group_instance_id)))
        {
            Ok(m) => m,
            Err(code) => {
                resp.error_code = code;
                return resp;
            }
        };
        let synced = match self
            .coordinator
            .run(|g| g.sync(now, &key, r.generation_id, &member, assignments))
        {
            Err(x) => x,
            Ok(rx) => match answer(rx, group::REBALANCE_TIMEOUT_MS_MAX as u64).await {
                Some(Answer::Sync(x)) => x,
                _ => group::Synced {
                    error: group::REBALANCE_IN_PROGRESS,
                    ..group::Synced::default()
                },
            },
        };
        tracing::debug!(group = %key.1, %member, generation = r.generation_id, error = synced.error, "kafka: SyncGroup answered");
        resp.error_code = synced.error;
        resp.protocol_type = synced.protocol_type.as_deref().map(s);
        resp.protocol_name = synced.protocol.as_deref().map(s);
        resp.assignment = synced.assignment;
        resp
    }

    pub(crate) async fn heartbeat(&self, cx: &Cx<'_, H::Session>, r: HeartbeatRequest) -> HeartbeatResponse {
        let mut resp = HeartbeatResponse::default();
        resp.error_code = self.here(cx).await;
        if resp.error_code == group::NONE {
            let key = Self::group_key(cx, &r.group_id);
            let now = (self.clock)();
            resp.error_code = self.coordinator.with(|g| {
                g.identify(&key, r.member_id.as_str(), instance(&r.group_instance_id))
                    .map_or_else(|code| code, |m| g.heartbeat(now, &key, r.generation_id, &m))
            });
        }
        resp
    }

    pub(crate) async fn leave_group(
        &self,
        cx: &Cx<'_, H::Session>,
        r: LeaveGroupRequest,
    ) -> LeaveGroupResponse {
        let mut resp = LeaveGroupResponse::default();
        // (member id, instance id): v3 names several, a static member
        // perhaps by its instance alone.
        let who: Vec<(String, Option<String>)> = if cx.version >= 3 {
            r.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.as_str().to_owned(),
                        instance(&m.group_instance_id).map(str::to_owned),
                    )
                })
                .collect()
        } else {
            vec![(r.member_id.as_str().to_owned(), None)]
        };
        let here = self.here(cx).await;
        let codes = if here != group::NONE {
            resp.error_code = here;
            vec![here; who.len()]
        } else {
            let key = Self::group_key(cx, &r.group_id);
            let now = (self.clock)();
            self.coordinator.with(|g| {
                who.iter()
                    .map(|(id, inst)| match g.identify(&key, id, inst.as_deref()) {
                        Ok(id) => g.leave(now, &key, &[id])[0],
                        Err(code) => code,
                    })
                    .collect()
            })
        };
        if cx.version >= 3 {
            resp.members = who
                .into_iter()
                .zip(&codes)
                .map(|((id, inst), &code)| {
                    let mut m = leave_group_response::MemberResponse::default();
                    m.member_id = s(&id);
                    m.group_instance_id = inst.as_deref().map(s);
                    m.error_code = code;
                    m
                })
                .collect();
        } else {
            resp.error_code = codes.first().copied().unwrap_or(group::NONE);
        }
        resp
    }

    /// DeleteGroups: a group without members loses its committed offsets
    /// (`kafka-consumer-groups --delete`); one with members is
    /// NON_EMPTY_GROUP, one with nothing committed GROUP_ID_NOT_FOUND.
    pub(crate) async fn delete_groups(
        &self,
        cx: &Cx<'_, H::Session>,
        r: DeleteGroupsRequest,
    ) -> DeleteGroupsResponse {
        let mut resp = DeleteGroupsResponse::default();
        let here = self.here(cx).await;
        let cache = self.offsets_cache(cx.tenant);
        for id in r.groups_names {
            let mut out = delete_groups_response::DeletableGroupResult::default();
            out.error_code = match here {
                group::NONE => self.delete_group(cx, &cache, &id).await,
                code => code,
            };
            out.group_id = id;
            resp.results.push(out);
        }
        resp
    }

    async fn delete_group(&self, cx: &Cx<'_, H::Session>, cache: &str, id: &GroupId) -> i16 {
        let key = Self::group_key(cx, id);
        let members = self
            .coordinator
            .with(|g| g.describe(&key).map_or(0, |v| v.members.len()));
        if members > 0 {
            return NON_EMPTY_GROUP;
        }
        let group_id = id.0.as_str();
        let committed = match self.committed_partitions(cx, cache, group_id).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        if committed.is_empty() {
            return group::GROUP_ID_NOT_FOUND;
        }
        for (topic, parts) in committed {
            for p in parts {
                let delete = Message::CacheDelete {
                    cache: cache.to_owned(),
                    key: offsets::key(group_id, &topic, p),
                    if_version: None,
                    writer: 0,
                    sequence: 0,
                };
                match self.ask(cx.session, delete).await {
                    Ok(_) => {}
                    Err(ErrorReply::NotLeader { .. }) => return NOT_COORDINATOR,
                    Err(e) => return code_of(&e),
                }
            }
        }
        group::NONE
    }

    pub(crate) async fn list_groups(&self, cx: &Cx<'_, H::Session>) -> ListGroupsResponse {
        let mut resp = ListGroupsResponse::default();
        // Only the coordinator knows groups; the others list none (admin
        // clients ask every broker and merge).
        if self.here(cx).await == group::NONE {
            let mut listed = self.coordinator.with(|g| g.list(cx.tenant));
            // A group whose members all left is gone from memory, but its
            // committed offsets keep it listed, Empty, as Kafka does; what
            // protocol it spoke went with its members.
            let cache = self.offsets_cache(cx.tenant);
            match self.committed_groups(cx, &cache).await {
                Ok(ids) => {
                    let live: HashSet<String> = listed.iter().map(|(id, _, _)| id.clone()).collect();
                    listed.extend(
                        ids.into_iter()
                            .filter(|id| !live.contains(id))
                            .map(|id| (id, String::new(), group::State::Empty)),
                    );
                    listed.sort();
                }
                Err(code) => resp.error_code = code,
            }
            resp.groups = listed
                .into_iter()
                .map(|(id, ptype, state)| {
                    let mut l = list_groups_response::ListedGroup::default();
                    l.group_id = GroupId(s(&id));
                    l.protocol_type = s(&ptype);
                    l.group_state = StrBytes::from_static_str(state.name());
                    l
                })
                .collect();
        }
        resp
    }

    pub(crate) async fn describe_groups(
        &self,
        cx: &Cx<'_, H::Session>,
        r: DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let mut resp = DescribeGroupsResponse::default();
        let here = self.here(cx).await;
        for id in r.groups {
            let mut d = describe_groups_response::DescribedGroup::default();
            let key = Self::group_key(cx, &id);
            d.group_id = id;
            if here != group::NONE {
                d.error_code = here;
                resp.groups.push(d);
                continue;
            }
            match self.coordinator.with(|g| g.describe(&key)) {
                None => {
                    let cache = self.offsets_cache(cx.tenant);
                    d.group_state = match self.has_committed(cx, &cache, &key.1).await {
                        Ok(true) => StrBytes::from_static_str(group::State::Empty.name()),
                        // Kafka's word for a group it does not hold.
                        Ok(false) => StrBytes::from_static_str("Dead"),
                        Err(code) => {
                            d.error_code = code;
                            StrBytes::from_static_str("Dead")
                        }
                    };
                }
                Some(v) => {
                    d.group_state = StrBytes::from_static_str(v.state.name());
                    d.protocol_type = s(&v.protocol_type);
                    d.protocol_data = s(&v.protocol);
                    d.members = v
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut dm = describe_groups_response::DescribedGroupMember::default();
                            dm.member_id = s(&m.member_id);
                            dm.group_instance_id = m.instance_id.as_deref().map(s);
                            dm.client_id = s(&m.client_id);
                            dm.client_host = s(&m.client_host);
                            dm.member_metadata = m.metadata;
                            dm.member_assignment = m.assignment;
                            dm
                        })
                        .collect();
                }
            }
            resp.groups.push(d);
        }
        resp
    }

    pub(crate) async fn offset_commit(
        &self,
        cx: &Cx<'_, H::Session>,
        r: OffsetCommitRequest,
    ) -> OffsetCommitResponse {
        let group_id = r.group_id.0.as_str().to_owned();
        let mut whole = self.here(cx).await;
        if whole == group::NONE && group_id.len() > offsets::GROUP_ID_BYTES_MAX {
            whole = group::INVALID_GROUP_ID;
        }
        if whole == group::NONE {
            let key = Self::group_key(cx, &r.group_id);
            let now = (self.clock)();
            let (generation, member) = (r.generation_id_or_member_epoch, r.member_id.as_str());
            whole = self.coordinator.with(|g| {
                g.identify(&key, member, instance(&r.group_instance_id))
                    .map_or_else(|code| code, |m| g.may_commit(now, &key, generation, &m))
            });
        }
        let cache = self.offsets_cache(cx.tenant);
        let now_ms = (self.clock)();
        let mut resp = OffsetCommitResponse::default();
        for t in r.topics {
            let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
            let topic = t.name.0.as_str().to_owned();
            let topic_ok = self.stream(cx.tenant, &topic).is_ok() && topic.len() <= offsets::TOPIC_BYTES_MAX;
            for p in t.partitions {
                let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                let metadata = p
                    .committed_metadata
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default();
                pr.error_code = if whole != group::NONE {
                    whole
                } else if !topic_ok || p.partition_index < 0 {
                    UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata.len() > offsets::METADATA_BYTES_MAX {
                    OFFSET_METADATA_TOO_LARGE
                } else {
                    let value = offsets::value(&Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        commit_ms: now_ms,
                        metadata,
                    });
                    let put = Message::CachePut {
                        cache: cache.clone(),
                        key: offsets::key(&group_id, &topic, p.partition_index),
                        value,
                        ttl_ms: Some(offsets::RETENTION_MS),
                        if_version: None,
                        writer: 0,
                        sequence: 0,
                    };
                    match self.ask(cx.session, put).await {
                        Ok(_) => group::NONE,
                        Err(ErrorReply::NotLeader { .. }) => NOT_COORDINATOR,
                        Err(e) => {
                            tracing::warn!(group = group_id, topic, error = %e, "kafka: an offset commit failed");
                            code_of(&e)
                        }
                    }
                };
                tr.partitions.push(pr);
            }
            tr.name = t.name;
            resp.topics.push(tr);
        }
        resp
    }

    pub(crate) async fn offset_fetch(
        &self,
        cx: &Cx<'_, H::Session>,
        r: OffsetFetchRequest,
    ) -> OffsetFetchResponse {
        let group_id = r.group_id.0.as_str().to_owned();
        let mut resp = OffsetFetchResponse::default();
        let here = self.here(cx).await;
        let cache = self.offsets_cache(cx.tenant);
        // (topic, partitions) asked, or every one the group committed.
        let asked: Vec<(String, Vec<i32>)> = match (r.topics, here) {
            (Some(ts), _) => ts
                .into_iter()
                .map(|t| (t.name.0.as_str().to_owned(), t.partition_indexes))
                .collect(),
            (None, group::NONE) => match self.committed_partitions(cx, &cache, &group_id).await {
                Ok(v) => v,
                Err(code) => {
                    resp.error_code = code;
                    return resp;
                }
            },
            (None, _) => Vec::new(),
        };
        if here != group::NONE {
            resp.error_code = here;
        }
        for (topic, parts) in asked {
            let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
            for p in parts {
                let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                pr.committed_offset = -1;
                pr.committed_leader_epoch = -1;
                pr.metadata = Some(StrBytes::default());
                if here != group::NONE {
                    pr.error_code = here;
                } else {
                    let get = Message::CacheGet {
                        cache: cache.clone(),
                        key: offsets::key(&group_id, &topic, p),
                    };
                    match self.ask(cx.session, get).await {
                        Ok(Message::CacheValue { entry: Some(e) }) => match offsets::parse_value(&e.value) {
                            Ok(c) => {
                                pr.committed_offset = c.offset;
                                pr.committed_leader_epoch = c.leader_epoch;
                                pr.metadata = Some(s(&c.metadata));
                            }
                            Err(e) => {
                                tracing::error!(group = group_id, topic, partition = p, error = %e, "kafka: a committed offset could not be read");
                                pr.error_code = crate::exec::UNKNOWN_SERVER_ERROR;
                            }
                        },
                        Ok(_) => {}
                        Err(ErrorReply::NotLeader { .. }) => pr.error_code = NOT_COORDINATOR,
                        Err(e) => pr.error_code = code_of(&e),
                    }
                }
                tr.partitions.push(pr);
            }
            tr.name = TopicName(s(&topic));
            resp.topics.push(tr);
        }
        resp
    }

    /// One page of the offsets cache's keys after `after`; none, and no
    /// next page, if the cache was never made (nothing was committed).
    async fn scan_offsets(
        &self,
        cx: &Cx<'_, H::Session>,
        cache: &str,
        after: Option<Bytes>,
    ) -> Result<(Vec<Bytes>, Option<Bytes>), i16> {
        let scan = Message::CacheScan {
            cache: cache.to_owned(),
            shard: 0,
            after,
            count: SCAN_KEYS_MAX as u32,
        };
        match self.ask(cx.session, scan).await {
            Ok(Message::CacheKeys { keys, next }) => Ok((keys, next)),
            Ok(_) => Err(crate::exec::UNKNOWN_SERVER_ERROR),
            Err(ErrorReply::NotLeader { .. }) => Err(NOT_COORDINATOR),
            Err(ErrorReply::UnknownStream(_)) => Ok((Vec::new(), None)),
            Err(e) => Err(code_of(&e)),
        }
    }

    /// Whether `group` has any offset committed in `cache`: one page read,
    /// not the group's every partition.
    async fn has_committed(&self, cx: &Cx<'_, H::Session>, cache: &str, group: &str) -> Result<bool, i16> {
        let prefix = offsets::group_prefix(group);
        let (keys, _) = self.scan_offsets(cx, cache, Some(prefix.clone())).await?;
        Ok(keys.first().is_some_and(|k| k.starts_with(&prefix)))
    }

    /// Every group with a committed offset in `cache`, at most
    /// [`LIST_GROUPS_MAX`]; none if the cache was never made.
    async fn committed_groups(&self, cx: &Cx<'_, H::Session>, cache: &str) -> Result<Vec<String>, i16> {
        let mut found: Vec<String> = Vec::new();
        let mut after: Option<Bytes> = None;
        for _ in 0..LIST_GROUPS_SCANS_MAX {
            let (keys, _) = self.scan_offsets(cx, cache, after.clone()).await?;
            let Some(last) = keys.last() else {
                return Ok(found);
            };
            for k in &keys {
                if let Some((g, _, _)) = offsets::parse_key(k) {
                    if found.last() != Some(&g) {
                        if found.len() >= LIST_GROUPS_MAX {
                            return Ok(found);
                        }
                        found.push(g);
                    }
                }
            }
            // On past the last group's other keys: a topic's length starts
            // them with a byte below 0xFF.
            let Some((g, _, _)) = offsets::parse_key(last) else {
                return Ok(found);
            };
            let mut next = BytesMut::from(&offsets::group_prefix(&g)[..]);
            next.put_u8(0xFF);
            after = Some(next.freeze());
        }
        Ok(found)
    }

    /// Every (topic, partitions) `group` has committed, by a scan of the
    /// offsets cache from the group's key prefix.
    async fn committed_partitions(
        &self,
        cx: &Cx<'_, H::Session>,
        cache: &str,
        group_id: &str,
    ) -> Result<Vec<(String, Vec<i32>)>, i16> {
        let prefix = offsets::group_prefix(group_id);
        let mut found: Vec<(String, Vec<i32>)> = Vec::new();
        let mut after = prefix.clone();
        let mut seen = 0usize;
        loop {
            let (keys, next) = self.scan_offsets(cx, cache, Some(after.clone())).await?;
            for k in &keys {
                if !k.starts_with(&prefix) {
                    return Ok(found);
                }
                seen += 1;
                if seen > FETCH_ALL_KEYS_MAX {
                    return Ok(found);
                }
                if let Some((_, topic, p)) = offsets::parse_key(k) {
                    match found.last_mut() {
                        Some((t, ps)) if *t == topic => ps.push(p),
                        _ => found.push((topic, vec![p])),
                    }
                }
            }
            match next {
                Some(n) => after = n,
                None => return Ok(found),
            }
        }
    }
}
