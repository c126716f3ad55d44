//! Kafka's classic consumer-group protocol as a state machine: who is in
//! a group, which generation it is at, who leads it and what each member
//! was assigned (`docs/kafka.md`, "Consumer groups"). Sans-IO: requests
//! and `now_ms` in, answers out; an answer that has to wait (a JoinGroup
//! until every member has rejoined, a follower's SyncGroup until the
//! leader's) gets a [`Ticket`] now and is found later by
//! [`Groups::take_ready`]. The coordinator's edge (`crate::coord`) holds
//! the waiting requests and calls [`Groups::sweep`] at
//! [`Groups::next_deadline_ms`].
//!
//! Membership lives in memory on the coordinator, as in Kafka; committed
//! offsets do not (they are in a replicated shard, `crate::offsets`).
//! When the coordinator moves, members are told NOT_COORDINATOR, find the
//! new one and join again.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

/// Groups one coordinator holds (all tenants together).
pub const GROUPS_MAX: usize = 10_000;
/// Members of one group.
pub const MEMBERS_MAX: usize = 1_000;
/// Members that were given an id (MEMBER_ID_REQUIRED) but have not yet
/// joined with it, per group.
pub const PENDING_IDS_MAX: usize = 1_000;
/// Session timeouts a member may ask for (Kafka's broker defaults are 6 s
/// and 30 min; the floor here is lower so tests and fast failover can
/// use short ones).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// Longest a rebalance waits for members to rejoin (librdkafka's default
/// `max.poll.interval.ms` is 300 s).
pub const REBALANCE_TIMEOUT_MS_MAX: i32 = 300_000;
/// Protocols one member may offer, and bytes of one member's metadata or
/// assignment.
pub const PROTOCOLS_MAX: usize = 16;
pub const MEMBER_BYTES_MAX: usize = 1 << 20;

pub const NONE: i16 = 0;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
pub const FENCED_INSTANCE_ID: i16 = 82;
/// Bytes of a static member's `group.instance.id`.
pub const INSTANCE_ID_BYTES_MAX: usize = 255;

/// A request that waits for its answer.
pub type Ticket = u64;

/// A group: the tenant it belongs to and its id.
pub type GroupKey = (String, String);

/// Where a group is in its rebalance cycle (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A JoinGroup.
#[derive(Debug, Clone)]
pub struct Join {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// v4 and later: a member without an id is given one and asked to
    /// join again with it (KIP-394).
    pub id_required: bool,
    /// v5 and later: a static member's `group.instance.id` (KIP-345). It
    /// outlives the member id: a restarted member joins under it, takes
    /// the place of its old id, and the group does not rebalance.
    pub instance_id: Option<String>,
}

/// A JoinGroup's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Joined {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// The leader's answer lists every member with its metadata for the
    /// chosen protocol; the others' is empty.
    pub members: Vec<(String, Bytes)>,
}

/// A SyncGroup's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// A waiting request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Join(Joined),
    Sync(Synced),
}

/// What DescribeGroups says of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// What DescribeGroups says of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberView>,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    last_seen_ms: i64,
    join: Option<Ticket>,
    sync: Option<Ticket>,
    assignment: Bytes,
    instance_id: Option<String>,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order (ids are unique; the first joined leads a new
    /// generation when the old leader is gone).
    members: BTreeMap<u64, String>,
    by_id: HashMap<String, (u64, Member)>,
    /// Ids given out with MEMBER_ID_REQUIRED, until when they may join.
    pending_ids: HashMap<String, i64>,
    /// Static members: instance id to its current member id.
    statics: HashMap<String, String>,
    /// PreparingRebalance: when members that have not rejoined are
    /// dropped. CompletingRebalance: when a leader that has not synced is.
    deadline_ms: i64,
}

impl Group {
    fn new() -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            by_id: HashMap::new(),
            pending_ids: HashMap::new(),
            statics: HashMap::new(),
            deadline_ms: i64::MAX,
        }
    }

    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.by_id.get_mut(id).map(|(_, m)| m)
    }

    /// A protocol every member (and `extra`) offers, in the leader's (or
    /// else the first member's) order of preference.
    fn common_protocol(&self, extra: Option<&[(String, Bytes)]>) -> Option<String> {
        let first = self
            .leader
            .as_ref()
            .and_then(|l| self.by_id.get(l))
            .or_else(|| self.members.values().next().and_then(|id| self.by_id.get(id)))
            .map(|(_, m)| m.protocols.as_slice())
            .or(extra)?;
        let offers = |ps: &[(String, Bytes)], name: &str| ps.iter().any(|(n, _)| n == name);
        first
            .iter()
            .map(|(n, _)| n)
            .find(|n| {
                self.by_id.values().all(|(_, m)| offers(&m.protocols, n))
                    && extra.is_none_or(|e| offers(e, n))
            })
            .cloned()
    }
}

/// Every group one coordinator holds.
#[derive(Debug)]
pub struct Groups {
    groups: HashMap<GroupKey, Group>,
    /// Makes member ids of this coordinator's life unlike any earlier
    /// one's, so a member id from before a restart is unknown, not
    /// someone else's.
    incarnation: u64,
    next_member: u64,
    next_ticket: Ticket,
    ready: Vec<(Ticket, Answer)>,
}

impl Groups {
    pub fn new(incarnation: u64) -> Groups {
        Groups {
            groups: HashMap::new(),
            incarnation,
            next_member: 0,
            next_ticket: 0,
            ready: Vec::new(),
        }
    }

    /// Answers whose requests waited, ready to send.
    pub fn take_ready(&mut self) -> Vec<(Ticket, Answer)> {
        std::mem::take(&mut self.ready)
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let prefix: String = client_id.chars().take(64).collect();
        format!("{prefix}-{:x}-{}", self.incarnation, self.next_member)
    }

    /// A JoinGroup: `Err(answer)` at once, or the ticket its answer will
    /// carry (which may already be ready). The refusal is boxed because
    /// it is the rare path and `Joined` is large.
    pub fn join(&mut self, now_ms: i64, key: &GroupKey, j: Join) -> Result<Ticket, Box<Joined>> {
        let fail = |error: i16, member_id: &str| {
            Box::new(Joined {
                error,
                generation: -1,
                member_id: member_id.to_owned(),
                ..Joined::default()
            })
        };
        if key.1.is_empty() {
            return Err(fail(INVALID_GROUP_ID, &j.member_id));
        }
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&j.session_timeout_ms) {
            return Err(fail(INVALID_SESSION_TIMEOUT, &j.member_id));
        }
        let too_big = j.protocols.iter().any(|(_, m)| m.len() > MEMBER_BYTES_MAX);
        if j.protocol_type.is_empty()
            || j.protocols.is_empty()
            || j.protocols.len() > PROTOCOLS_MAX
            || too_big
        {
            return Err(fail(INCONSISTENT_GROUP_PROTOCOL, &j.member_id));
        }
        if !self.groups.contains_key(key) && self.groups.len() >= GROUPS_MAX {
            return Err(fail(GROUP_MAX_SIZE_REACHED, &j.member_id));
        }
        if let Some(inst) = &j.instance_id {
            if inst.is_empty() || inst.len() > INSTANCE_ID_BYTES_MAX {
                return Err(fail(INVALID_GROUP_ID, &j.member_id));
            }
            let g = self.groups.entry(key.clone()).or_insert_with(Group::new);
            match g.statics.get(inst).cloned() {
                // Its member id from before: fenced by the one it has now.
                Some(now_id) if !j.member_id.is_empty() && j.member_id != now_id => {
                    return Err(fail(FENCED_INSTANCE_ID, &j.member_id))
                }
                // A restarted static member: it takes its old place.
                Some(old) if j.member_id.is_empty() => return Ok(self.rejoin_static(now_ms, key, &old, j)),
                _ => {}
            }
        }
        let mut member_id = j.member_id.clone();
        if member_id.is_empty() && j.instance_id.is_some() {
            // Static members are known by their instance id: no round
            // trip for a member id (KIP-345).
            member_id = self.new_member_id(&j.client_id);
        }
        if member_id.is_empty() {
            member_id = self.new_member_id(&j.client_id);
            if j.id_required {
                let g = self.groups.entry(key.clone()).or_insert_with(Group::new);
                g.pending_ids.retain(|_, until| *until > now_ms);
                if g.pending_ids.len() >= PENDING_IDS_MAX {
                    return Err(fail(GROUP_MAX_SIZE_REACHED, ""));
                }
                g.pending_ids
                    .insert(member_id.clone(), now_ms + i64::from(j.session_timeout_ms));
                return Err(fail(MEMBER_ID_REQUIRED, &member_id));
            }
        }
        let ticket = self.ticket();
        let g = self.groups.entry(key.clone()).or_insert_with(Group::new);
        let known = g.by_id.contains_key(&member_id);
        if !known {
            let pending = g
                .pending_ids
                .remove(&member_id)
                .is_some_and(|until| until > now_ms);
            if !j.member_id.is_empty() && !pending {
                return Err(fail(UNKNOWN_MEMBER_ID, &member_id));
            }
            if g.by_id.len() >= MEMBERS_MAX {
                return Err(fail(GROUP_MAX_SIZE_REACHED, &member_id));
            }
        }
        if g.state != State::Empty && g.protocol_type.as_deref() != Some(j.protocol_type.as_str()) {
            return Err(fail(INCONSISTENT_GROUP_PROTOCOL, &member_id));
        }
        if !g.by_id.is_empty() && g.common_protocol(Some(&j.protocols)).is_none() {
            // A member already in can change what it offers; judge the
            // group without its old offer.
            let alone = known && g.by_id.len() == 1;
            if !alone {
                return Err(fail(INCONSISTENT_GROUP_PROTOCOL, &member_id));
            }
        }
        let rebalance_timeout_ms = j.rebalance_timeout_ms.clamp(
            j.session_timeout_ms.min(REBALANCE_TIMEOUT_MS_MAX),
            REBALANCE_TIMEOUT_MS_MAX,
        );
        if let Some(inst) = &j.instance_id {
            g.statics.insert(inst.clone(), member_id.clone());
        }
        let replaced = match g.by_id.get_mut(&member_id) {
            Some((_, m)) => {
                m.instance_id = j.instance_id.clone();
                m.protocols = j.protocols;
                m.session_timeout_ms = j.session_timeout_ms;
                m.rebalance_timeout_ms = rebalance_timeout_ms;
                m.last_seen_ms = now_ms;
                m.join.replace(ticket)
            }
            None => {
                self.next_member += 1;
                let order = self.next_member;
                g.members.insert(order, member_id.clone());
                g.by_id.insert(
                    member_id.clone(),
                    (
                        order,
                        Member {
                            client_id: j.client_id,
                            client_host: j.client_host,
                            protocols: j.protocols,
                            session_timeout_ms: j.session_timeout_ms,
                            rebalance_timeout_ms,
                            last_seen_ms: now_ms,
                            join: Some(ticket),
                            sync: None,
                            assignment: Bytes::new(),
                            instance_id: j.instance_id.clone(),
                        },
                    ),
                );
                None
            }
        };
        if let Some(old) = replaced {
            // The same member joined again before its first join was
            // answered (from another connection): the older one is stale.
            self.ready
                .push((old, Answer::Join(*fail(REBALANCE_IN_PROGRESS, &member_id))));
        }
        if g.state == State::Empty {
            g.protocol_type = Some(j.protocol_type);
        }
        prepare(g, now_ms, &mut self.ready);
        complete_join_if_all_in(g, now_ms, &mut self.ready);
        Ok(ticket)
    }

    /// A static member that joins without a member id while the group
    /// holds its instance under `old`: it gets a new member id in the old
    /// one's place (the old id is fenced), keeping its order and
    /// assignment. A stable group whose member offers what it offered
    /// before does not rebalance: the member is answered at once with the
    /// current generation and syncs to its old assignment. A leader's
    /// return, a changed offer or a group mid-rebalance goes through a
    /// rebalance, since the assignment may have to change.
    fn rejoin_static(&mut self, now_ms: i64, key: &GroupKey, old: &str, j: Join) -> Ticket {
        let new_id = self.new_member_id(&j.client_id);
        let ticket = self.ticket();
        let g = self.groups.get_mut(key).expect("the caller found the group");
        let (order, mut m) = g.by_id.remove(old).expect("statics name members of the group");
        let fenced = |error| {
            Answer::Join(Joined {
                error,
                generation: -1,
                member_id: old.to_owned(),
                ..Joined::default()
            })
        };
        if let Some(t) = m.join.take() {
            self.ready.push((t, fenced(FENCED_INSTANCE_ID)));
        }
        if let Some(t) = m.sync.take() {
            self.ready.push((
                t,
                Answer::Sync(Synced {
                    error: FENCED_INSTANCE_ID,
                    ..Synced::default()
                }),
            ));
        }
        let unchanged = m.protocols == j.protocols;
        m.client_id = j.client_id;
        m.client_host = j.client_host;
        m.protocols = j.protocols;
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms.clamp(
            j.session_timeout_ms.min(REBALANCE_TIMEOUT_MS_MAX),
            REBALANCE_TIMEOUT_MS_MAX,
        );
        m.last_seen_ms = now_ms;
        let was_leader = g.leader.as_deref() == Some(old);
        if was_leader {
            g.leader = Some(new_id.clone());
        }
        g.members.insert(order, new_id.clone());
        if let Some(inst) = &m.instance_id {
            g.statics.insert(inst.clone(), new_id.clone());
        }
        if g.state == State::Stable && unchanged && !was_leader {
            g.by_id.insert(new_id.clone(), (order, m));
            self.ready.push((
                ticket,
                Answer::Join(Joined {
                    error: NONE,
                    generation: g.generation,
                    protocol_type: g.protocol_type.clone(),
                    protocol: g.protocol.clone(),
                    leader: g.leader.clone().unwrap_or_default(),
                    member_id: new_id,
                    members: Vec::new(),
                }),
            ));
            return ticket;
        }
        m.join = Some(ticket);
        g.by_id.insert(new_id, (order, m));
        prepare(g, now_ms, &mut self.ready);
        complete_join_if_all_in(g, now_ms, &mut self.ready);
        ticket
    }

    /// The member a request from (`member_id`, `instance_id`) acts as: a
    /// static member may be named by its instance alone (LeaveGroup v3),
    /// and a member id its instance has moved on from is fenced.
    pub fn identify(
        &self,
        key: &GroupKey,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<String, i16> {
        let Some(inst) = instance_id else {
            return Ok(member_id.to_owned());
        };
        match self.groups.get(key).and_then(|g| g.statics.get(inst)) {
            Some(id) if member_id.is_empty() || member_id == id => Ok(id.clone()),
            Some(_) => Err(FENCED_INSTANCE_ID),
            None => Err(UNKNOWN_MEMBER_ID),
        }
    }

    /// A SyncGroup: `Err(answer)` at once, or the ticket its answer will
    /// carry (ready at once unless a follower waits for the leader).
    pub fn sync(
        &mut self,
        now_ms: i64,
        key: &GroupKey,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Ticket, Synced> {
        let fail = |error: i16| Synced {
            error,
            ..Synced::default()
        };
        let ticket = self.ticket();
        let Some(g) = self.groups.get_mut(key) else {
            return Err(fail(UNKNOWN_MEMBER_ID));
        };
        let leader = g.leader.as_deref() == Some(member_id);
        let (state, gen) = (g.state, g.generation);
        let Some(m) = g.member(member_id) else {
            return Err(fail(UNKNOWN_MEMBER_ID));
        };
        if generation != gen {
            return Err(fail(ILLEGAL_GENERATION));
        }
        m.last_seen_ms = now_ms;
        match state {
            State::Empty => return Err(fail(UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => return Err(fail(REBALANCE_IN_PROGRESS)),
            State::Stable => {
                let a = m.assignment.clone();
                self.ready.push((
                    ticket,
                    Answer::Sync(Synced {
                        error: NONE,
                        protocol_type: g.protocol_type.clone(),
                        protocol: g.protocol.clone(),
                        assignment: a,
                    }),
                ));
                return Ok(ticket);
            }
            State::CompletingRebalance => {}
        }
        if let Some(old) = m.sync.replace(ticket) {
            self.ready.push((old, Answer::Sync(fail(REBALANCE_IN_PROGRESS))));
        }
        if leader {
            if assignments.iter().any(|(_, a)| a.len() > MEMBER_BYTES_MAX) {
                if let Some(m) = g.member(member_id) {
                    m.sync = None;
                }
                return Err(fail(INCONSISTENT_GROUP_PROTOCOL));
            }
            for (id, a) in assignments {
                if let Some(m) = g.member(&id) {
                    m.assignment = a;
                }
            }
            g.state = State::Stable;
            g.deadline_ms = i64::MAX;
            let (pt, p) = (g.protocol_type.clone(), g.protocol.clone());
            for (_, m) in g.by_id.values_mut() {
                if let Some(t) = m.sync.take() {
                    self.ready.push((
                        t,
                        Answer::Sync(Synced {
                            error: NONE,
                            protocol_type: pt.clone(),
                            protocol: p.clone(),
                            assignment: m.assignment.clone(),
                        }),
                    ));
                }
            }
        }
        Ok(ticket)
    }

    /// A Heartbeat's error code.
    pub fn heartbeat(&mut self, now_ms: i64, key: &GroupKey, generation: i32, member_id: &str) -> i16 {
        let Some(g) = self.groups.get_mut(key) else {
            return UNKNOWN_MEMBER_ID;
        };
        let (state, gen) = (g.state, g.generation);
        let Some(m) = g.member(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        m.last_seen_ms = now_ms;
        match state {
            State::Empty => UNKNOWN_MEMBER_ID,
            _ if generation != gen => ILLEGAL_GENERATION,
            State::PreparingRebalance => REBALANCE_IN_PROGRESS,
            State::CompletingRebalance | State::Stable => NONE,
        }
    }

    /// A LeaveGroup of `member_ids`: each one's error code.
    pub fn leave(&mut self, now_ms: i64, key: &GroupKey, member_ids: &[String]) -> Vec<i16> {
        let Some(g) = self.groups.get_mut(key) else {
            return vec![UNKNOWN_MEMBER_ID; member_ids.len()];
        };
        let codes = member_ids
            .iter()
            .map(|id| {
                if remove(g, id, &mut self.ready) {
                    NONE
                } else {
                    UNKNOWN_MEMBER_ID
                }
            })
            .collect::<Vec<_>>();
        if codes.contains(&NONE) {
            prepare(g, now_ms, &mut self.ready);
            complete_join_if_all_in(g, now_ms, &mut self.ready);
        }
        codes
    }

    /// Whether an OffsetCommit from `member_id` at `generation` may
    /// commit (NONE) or why not. Generation -1 with no member is a
    /// commit from outside any group (a simple consumer or an admin),
    /// allowed only while the group has no members.
    pub fn may_commit(&mut self, now_ms: i64, key: &GroupKey, generation: i32, member_id: &str) -> i16 {
        let Some(g) = self.groups.get_mut(key) else {
            return if generation < 0 { NONE } else { UNKNOWN_MEMBER_ID };
        };
        if generation < 0 && member_id.is_empty() {
            return if g.by_id.is_empty() {
                NONE
            } else {
                ILLEGAL_GENERATION
            };
        }
        let (state, gen) = (g.state, g.generation);
        let Some(m) = g.member(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        m.last_seen_ms = now_ms;
        match state {
            _ if generation != gen => ILLEGAL_GENERATION,
            State::Stable => NONE,
            _ => REBALANCE_IN_PROGRESS,
        }
    }

    /// Drops members whose session ran out and ends rebalances whose time
    /// is up. Call at [`Groups::next_deadline_ms`] (or any time).
    pub fn sweep(&mut self, now_ms: i64) {
        for g in self.groups.values_mut() {
            let expired: Vec<String> = g
                .by_id
                .iter()
                .filter(|(_, (_, m))| {
                    m.join.is_none() && m.last_seen_ms + i64::from(m.session_timeout_ms) <= now_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut changed = false;
            for id in &expired {
                changed |= remove(g, id, &mut self.ready);
            }
            if g.state == State::PreparingRebalance && now_ms >= g.deadline_ms {
                // Whoever has not rejoined by now is out.
                let late: Vec<String> = g
                    .by_id
                    .iter()
                    .filter(|(_, (_, m))| m.join.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &late {
                    remove(g, id, &mut self.ready);
                }
                complete_join_if_all_in(g, now_ms, &mut self.ready);
            } else if changed {
                prepare(g, now_ms, &mut self.ready);
                complete_join_if_all_in(g, now_ms, &mut self.ready);
            }
            g.pending_ids.retain(|_, until| *until > now_ms);
        }
        // An empty group holds nothing the offsets do not: forget it.
        self.groups
            .retain(|_, g| g.state != State::Empty || !g.pending_ids.is_empty());
    }

    /// When [`Groups::sweep`] next has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.groups
            .values()
            .flat_map(|g| {
                let sessions = g
                    .by_id
                    .values()
                    .filter(|(_, m)| m.join.is_none())
                    .map(|(_, m)| m.last_seen_ms + i64::from(m.session_timeout_ms));
                let pending = g.pending_ids.values().copied();
                let rebalance = (g.state == State::PreparingRebalance).then_some(g.deadline_ms);
                sessions.chain(pending).chain(rebalance)
            })
            .min()
    }

    pub fn describe(&self, key: &GroupKey) -> Option<GroupView> {
        let g = self.groups.get(key)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            members: g
                .members
                .values()
                .filter_map(|id| g.by_id.get(id).map(|(_, m)| (id, m)))
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            protocol,
        })
    }

    /// `tenant`'s groups: (id, protocol type, state).
    pub fn list(&self, tenant: &str) -> Vec<(String, String, State)> {
        let mut v: Vec<_> = self
            .groups
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), g)| (id.clone(), g.protocol_type.clone().unwrap_or_default(), g.state))
            .collect();
        v.sort();
        v
    }
}

/// Removes a member, answering whatever it waits on; whether it was in.
fn remove(g: &mut Group, id: &str, ready: &mut Vec<(Ticket, Answer)>) -> bool {
    let Some((order, m)) = g.by_id.remove(id) else {
        return false;
    };
    g.members.remove(&order);
    if let Some(inst) = &m.instance_id {
        if g.statics.get(inst).is_some_and(|now| now == id) {
            g.statics.remove(inst);
        }
    }
    if let Some(t) = m.join {
        ready.push((
            t,
            Answer::Join(Joined {
                error: UNKNOWN_MEMBER_ID,
                generation: -1,
                member_id: id.to_owned(),
                ..Joined::default()
            }),
        ));
    }
    if let Some(t) = m.sync {
        ready.push((
            t,
            Answer::Sync(Synced {
                error: UNKNOWN_MEMBER_ID,
                ..Synced::default()
            }),
        ));
    }
    if g.leader.as_deref() == Some(id) {
        g.leader = None;
    }
    true
}

/// Starts a rebalance (if one is not under way): every member must join
/// again within the longest rebalance timeout among them.
fn prepare(g: &mut Group, now_ms: i64, ready: &mut Vec<(Ticket, Answer)>) {
    if g.state == State::PreparingRebalance {
        return;
    }
    // Followers waiting on the old generation's assignment will not get
    // one: they learn of the rebalance and join.
    for (_, m) in g.by_id.values_mut() {
        if let Some(t) = m.sync.take() {
            ready.push((
                t,
                Answer::Sync(Synced {
                    error: REBALANCE_IN_PROGRESS,
                    ..Synced::default()
                }),
            ));
        }
    }
    let longest = g
        .by_id
        .values()
        .map(|(_, m)| m.rebalance_timeout_ms)
        .max()
        .unwrap_or(0);
    g.state = State::PreparingRebalance;
    g.deadline_ms = now_ms + i64::from(longest);
}

/// Ends the join phase once every member has rejoined: a new generation,
/// its protocol and leader, and every join answered.
fn complete_join_if_all_in(g: &mut Group, now_ms: i64, ready: &mut Vec<(Ticket, Answer)>) {
    if g.state != State::PreparingRebalance || g.by_id.values().any(|(_, m)| m.join.is_none()) {
        return;
    }
    g.generation = g.generation.wrapping_add(1).max(1);
    g.deadline_ms = i64::MAX;
    if g.by_id.is_empty() {
        g.state = State::Empty;
        g.protocol = None;
        g.protocol_type = None;
        g.leader = None;
        return;
    }
    let protocol = g
        .common_protocol(None)
        .expect("joins are refused unless every member shares a protocol");
    if g.leader.as_ref().is_none_or(|l| !g.by_id.contains_key(l)) {
        g.leader = g.members.values().next().cloned();
    }
    let leader = g.leader.clone().expect("a group with members has a leader");
    let everyone: Vec<(String, Bytes)> = g
        .members
        .values()
        .map(|id| {
            let (_, m) = &g.by_id[id];
            let meta = m
                .protocols
                .iter()
                .find(|(n, _)| *n == protocol)
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
            (id.clone(), meta)
        })
        .collect();
    g.protocol = Some(protocol.clone());
    g.state = State::CompletingRebalance;
    for (id, (_, m)) in g.by_id.iter_mut() {
        m.assignment = Bytes::new();
        m.last_seen_ms = now_ms;
        let t = m.join.take().expect("every member joined");
        ready.push((
            t,
            Answer::Join(Joined {
                error: NONE,
                generation: g.generation,
                protocol_type: g.protocol_type.clone(),
                protocol: Some(protocol.clone()),
                leader: leader.clone(),
                member_id: id.clone(),
                members: if *id == leader {
                    everyone.clone()
                } else {
                    Vec::new()
                },
            }),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GroupKey {
        ("acme".into(), "billing".into())
    }

    fn join(id: &str) -> Join {
        Join {
            member_id: id.into(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            id_required: true,
            instance_id: None,
        }
    }

    fn joined(gs: &mut Groups, t: Ticket) -> Joined {
        let ready = gs.take_ready();
        let Some((_, Answer::Join(j))) = ready.into_iter().find(|(x, _)| *x == t) else {
            panic!("join {t} not answered");
        };
        j
    }

    /// A member that joins with no id, is given one, and joins with it.
    fn admit(gs: &mut Groups, now: i64) -> (String, Ticket) {
        let e = gs.join(now, &key(), join("")).unwrap_err();
        assert_eq!(e.error, MEMBER_ID_REQUIRED);
        let t = gs.join(now, &key(), join(&e.member_id)).unwrap();
        (e.member_id, t)
    }

    fn static_join(id: &str, instance: &str) -> Join {
        Join {
            instance_id: Some(instance.into()),
            ..join(id)
        }
    }

    /// A stable group of `a` (dynamic, the leader) and static `s`, each
    /// assigned its own name: (a, s).
    fn stable_with_a_static_follower(gs: &mut Groups) -> (String, String) {
        let (a, t) = admit(gs, 0);
        joined(gs, t);
        // A static member needs no MEMBER_ID_REQUIRED round trip.
        let ts = gs.join(0, &key(), static_join("", "pod-1")).unwrap();
        let ta = gs.join(0, &key(), join(&a)).unwrap();
        let mut ready = gs.take_ready();
        ready.sort_by_key(|(t, _)| *t);
        let s = match &ready[..] {
            [(x, Answer::Join(js)), (y, Answer::Join(_))] if (*x, *y) == (ts, ta) => js.member_id.clone(),
            other => panic!("{other:?}"),
        };
        gs.sync(0, &key(), 2, &s, vec![]).unwrap();
        let assign = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (s.clone(), Bytes::from_static(b"S")),
        ];
        gs.sync(0, &key(), 2, &a, assign).unwrap();
        gs.take_ready();
        (a, s)
    }

    #[test]
    fn a_restarted_static_member_takes_its_old_place_without_a_rebalance() {
        let mut gs = Groups::new(7);
        let (a, s) = stable_with_a_static_follower(&mut gs);
        // The pod restarts: no LeaveGroup, a join with no member id.
        let t = gs.join(1_000, &key(), static_join("", "pod-1")).unwrap();
        let j = joined(&mut gs, t);
        assert_eq!((j.error, j.generation, j.leader.as_str()), (NONE, 2, a.as_str()));
        assert_ne!(j.member_id, s, "a new member id");
        assert!(j.members.is_empty());
        // Nobody else rebalances, and it syncs to its old assignment.
        assert_eq!(gs.heartbeat(1_100, &key(), 2, &a), NONE);
        let st = gs.sync(1_200, &key(), 2, &j.member_id, vec![]).unwrap();
        let ready = gs.take_ready();
        assert!(
            matches!(&ready[..], [(x, Answer::Sync(y))] if *x == st && y.assignment == Bytes::from_static(b"S"))
        );
        // The old incarnation is fenced wherever it shows up.
        assert_eq!(gs.identify(&key(), &s, Some("pod-1")), Err(FENCED_INSTANCE_ID));
        let e = gs.join(1_300, &key(), static_join(&s, "pod-1")).unwrap_err();
        assert_eq!(e.error, FENCED_INSTANCE_ID);
        assert_eq!(
            gs.identify(&key(), &j.member_id, Some("pod-1")),
            Ok(j.member_id.clone())
        );
        let v = gs.describe(&key()).unwrap();
        assert_eq!(v.state, State::Stable);
        assert_eq!(v.members.len(), 2);
        assert!(v
            .members
            .iter()
            .any(|m| m.member_id == j.member_id && m.instance_id.as_deref() == Some("pod-1")));
    }

    #[test]
    fn a_static_leaders_return_or_a_changed_offer_rebalances() {
        let mut gs = Groups::new(7);
        let (a, _s) = stable_with_a_static_follower(&mut gs);
        // The static member comes back offering something else.
        let mut j = static_join("", "pod-1");
        j.protocols = vec![("range".into(), Bytes::from_static(b"other topics"))];
        let t = gs.join(1_000, &key(), j).unwrap();
        assert!(gs.take_ready().is_empty(), "it waits for the rebalance");
        assert_eq!(gs.heartbeat(1_100, &key(), 2, &a), REBALANCE_IN_PROGRESS);
        gs.join(1_200, &key(), join(&a)).unwrap();
        let ready = gs.take_ready();
        let new = ready
            .iter()
            .find_map(|(x, ans)| match ans {
                Answer::Join(j) if *x == t => Some(j.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((new.error, new.generation), (NONE, 3));

        // A static leader's return rebalances too: the leader assigns.
        let mut gs = Groups::new(8);
        let t = gs.join(0, &key(), static_join("", "lead")).unwrap();
        let first = joined(&mut gs, t);
        gs.sync(0, &key(), 1, &first.member_id, vec![]).unwrap();
        gs.take_ready();
        let t = gs.join(500, &key(), static_join("", "lead")).unwrap();
        let again = joined(&mut gs, t);
        assert_eq!((again.error, again.generation), (NONE, 2));
        assert_eq!(again.leader, again.member_id);
        assert_eq!(again.members.len(), 1, "the leader gets the members to assign");
    }

    #[test]
    fn a_static_member_leaves_by_instance_or_expires_and_its_instance_is_free() {
        let mut gs = Groups::new(7);
        let (a, s) = stable_with_a_static_follower(&mut gs);
        // LeaveGroup v3 may name the instance alone.
        let id = gs.identify(&key(), "", Some("pod-1")).unwrap();
        assert_eq!(id, s);
        assert_eq!(gs.leave(1_000, &key(), &[id]), vec![NONE]);
        assert_eq!(gs.identify(&key(), "", Some("pod-1")), Err(UNKNOWN_MEMBER_ID));
        assert_eq!(gs.heartbeat(1_100, &key(), 2, &a), REBALANCE_IN_PROGRESS);
        // Joining again under the instance is a new member.
        let t = gs.join(1_200, &key(), static_join("", "pod-1")).unwrap();
        gs.join(1_200, &key(), join(&a)).unwrap();
        let back = joined(&mut gs, t);
        assert_eq!((back.error, back.generation), (NONE, 3));
        // A static member whose session runs out is dropped as any other.
        for now in (2_000..=12_000).step_by(1_000) {
            gs.heartbeat(now, &key(), 3, &a);
            gs.sweep(now);
        }
        gs.sweep(12_000);
        assert_eq!(gs.identify(&key(), "", Some("pod-1")), Err(UNKNOWN_MEMBER_ID));
    }

    #[test]
    fn a_lone_member_joins_leads_and_gets_its_own_assignment() {
        let mut gs = Groups::new(7);
        let (a, t) = admit(&mut gs, 0);
        let j = joined(&mut gs, t);
        assert_eq!((j.error, j.generation, j.leader.as_str()), (NONE, 1, a.as_str()));
        assert_eq!(j.members, vec![(a.clone(), Bytes::from_static(b"m"))]);
        assert_eq!(j.protocol.as_deref(), Some("range"));
        let t = gs
            .sync(1, &key(), 1, &a, vec![(a.clone(), Bytes::from_static(b"p0"))])
            .unwrap();
        let ready = gs.take_ready();
        assert_eq!(ready.len(), 1);
        assert!(
            matches!(&ready[0], (x, Answer::Sync(s)) if *x == t && s.assignment == Bytes::from_static(b"p0"))
        );
        assert_eq!(gs.heartbeat(2, &key(), 1, &a), NONE);
        assert_eq!(gs.may_commit(2, &key(), 1, &a), NONE);
        assert_eq!(gs.may_commit(2, &key(), 0, &a), ILLEGAL_GENERATION);
        assert_eq!(gs.heartbeat(2, &key(), 1, "stranger"), UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_second_member_makes_the_first_rejoin_and_followers_wait_for_the_leaders_sync() {
        let mut gs = Groups::new(7);
        let (a, t) = admit(&mut gs, 0);
        joined(&mut gs, t);
        gs.sync(0, &key(), 1, &a, vec![]).unwrap();
        gs.take_ready();
        // b's join starts a rebalance; a hears of it on its heartbeat.
        let (b, tb) = admit(&mut gs, 100);
        assert!(gs.take_ready().is_empty(), "b waits for a to rejoin");
        assert_eq!(gs.heartbeat(200, &key(), 1, &a), REBALANCE_IN_PROGRESS);
        assert_eq!(gs.may_commit(200, &key(), 1, &a), REBALANCE_IN_PROGRESS);
        let ta = gs.join(300, &key(), join(&a)).unwrap();
        let ready = gs.take_ready();
        assert_eq!(ready.len(), 2);
        for (t, ans) in ready {
            let Answer::Join(j) = ans else { panic!() };
            assert_eq!(
                (j.generation, j.leader.as_str()),
                (2, a.as_str()),
                "the old leader keeps leading"
            );
            if t == ta {
                assert_eq!(j.members.len(), 2);
            } else {
                assert_eq!(t, tb);
                assert!(j.members.is_empty());
            }
        }
        // The follower's sync waits for the leader's.
        let sb = gs.sync(400, &key(), 2, &b, vec![]).unwrap();
        assert!(gs.take_ready().is_empty());
        let sa = gs
            .sync(
                500,
                &key(),
                2,
                &a,
                vec![
                    (a.clone(), Bytes::from_static(b"A")),
                    (b.clone(), Bytes::from_static(b"B")),
                ],
            )
            .unwrap();
        let mut got: Vec<(Ticket, Bytes)> = gs
            .take_ready()
            .into_iter()
            .map(|(t, ans)| match ans {
                Answer::Sync(s) => (t, s.assignment),
                _ => panic!(),
            })
            .collect();
        got.sort();
        let mut want = vec![(sb, Bytes::from_static(b"B")), (sa, Bytes::from_static(b"A"))];
        want.sort();
        assert_eq!(got, want);
        let v = gs.describe(&key()).unwrap();
        assert_eq!(v.state, State::Stable);
        assert_eq!(v.members.len(), 2);
    }

    #[test]
    fn a_member_that_stops_heartbeating_is_dropped_and_the_rest_rebalance() {
        let mut gs = Groups::new(7);
        let (a, t) = admit(&mut gs, 0);
        joined(&mut gs, t);
        let (b, tb) = admit(&mut gs, 0);
        let ta = gs.join(0, &key(), join(&a)).unwrap();
        gs.take_ready();
        let assign = vec![(a.clone(), Bytes::new()), (b.clone(), Bytes::new())];
        gs.sync(0, &key(), 2, &b, vec![]).unwrap();
        gs.sync(0, &key(), 2, &a, assign).unwrap();
        gs.take_ready();
        let _ = (ta, tb);
        // a keeps beating; b falls silent.
        for now in (1_000..=10_000).step_by(1_000) {
            assert_eq!(gs.heartbeat(now, &key(), 2, &a), NONE);
            gs.sweep(now);
        }
        assert_eq!(gs.next_deadline_ms(), Some(20_000), "a's session");
        gs.sweep(10_001);
        assert_eq!(gs.heartbeat(10_002, &key(), 2, &b), UNKNOWN_MEMBER_ID);
        assert_eq!(gs.heartbeat(10_002, &key(), 2, &a), REBALANCE_IN_PROGRESS);
        let t = gs.join(10_003, &key(), join(&a)).unwrap();
        let j = joined(&mut gs, t);
        assert_eq!((j.generation, j.members.len()), (3, 1));
    }

    #[test]
    fn a_member_that_does_not_rejoin_in_time_is_left_out_of_the_new_generation() {
        let mut gs = Groups::new(7);
        let (a, t) = admit(&mut gs, 0);
        joined(&mut gs, t);
        gs.sync(0, &key(), 1, &a, vec![]).unwrap();
        let (_b, tb) = admit(&mut gs, 1_000);
        gs.take_ready();
        // a keeps its session alive by heartbeats but never rejoins.
        assert_eq!(
            gs.next_deadline_ms(),
            Some(10_000),
            "a's session ends before the rebalance's 31 s"
        );
        gs.heartbeat(9_000, &key(), 1, &a);
        gs.heartbeat(18_000, &key(), 1, &a);
        gs.heartbeat(27_000, &key(), 1, &a);
        gs.sweep(30_999);
        assert!(gs.take_ready().is_empty());
        gs.sweep(31_000);
        let j = joined(&mut gs, tb);
        assert_eq!((j.error, j.generation, j.members.len()), (NONE, 2, 1));
        assert_eq!(gs.heartbeat(31_001, &key(), 1, &a), UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn leaving_rebalances_the_rest_and_the_last_to_leave_empties_the_group() {
        let mut gs = Groups::new(7);
        let (a, t) = admit(&mut gs, 0);
        joined(&mut gs, t);
        let (b, _) = admit(&mut gs, 0);
        gs.join(0, &key(), join(&a)).unwrap();
        gs.take_ready();
        // b leaves while a's follower sync... a leads; b's sync is pending.
        let sb = gs.sync(0, &key(), 2, &b, vec![]).unwrap();
        assert_eq!(
            gs.leave(1, &key(), &[b.clone(), "nobody".into()]),
            vec![NONE, UNKNOWN_MEMBER_ID]
        );
        let ready = gs.take_ready();
        assert!(ready
            .iter()
            .any(|(t, a)| *t == sb && matches!(a, Answer::Sync(s) if s.error == UNKNOWN_MEMBER_ID)));
        assert_eq!(gs.describe(&key()).unwrap().state, State::PreparingRebalance);
        assert_eq!(gs.leave(2, &key(), &[a]), vec![NONE]);
        assert_eq!(gs.describe(&key()).unwrap().state, State::Empty);
        assert_eq!(
            gs.may_commit(3, &key(), -1, ""),
            NONE,
            "an empty group takes outside commits"
        );
        gs.sweep(3);
        assert!(gs.describe(&key()).is_none(), "an empty group is forgotten");
    }

    #[test]
    fn bad_joins_are_refused_with_kafkas_codes() {
        let mut gs = Groups::new(7);
        let mut j = join("");
        j.session_timeout_ms = 10;
        assert_eq!(gs.join(0, &key(), j).unwrap_err().error, INVALID_SESSION_TIMEOUT);
        assert_eq!(
            gs.join(0, &key(), join("made-up")).unwrap_err().error,
            UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            gs.join(0, &("acme".into(), String::new()), join(""))
                .unwrap_err()
                .error,
            INVALID_GROUP_ID
        );
        let (_a, t) = admit(&mut gs, 0);
        joined(&mut gs, t);
        let mut other = join("");
        other.id_required = false;
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        assert_eq!(
            gs.join(0, &key(), other).unwrap_err().error,
            INCONSISTENT_GROUP_PROTOCOL
        );
        let mut other = join("");
        other.id_required = false;
        other.protocol_type = "connect".into();
        assert_eq!(
            gs.join(0, &key(), other).unwrap_err().error,
            INCONSISTENT_GROUP_PROTOCOL
        );
        // Ids from another incarnation of the coordinator are unknown.
        let mut later = Groups::new(8);
        let (id, _) = admit(&mut later, 0);
        assert_ne!(id, gs.new_member_id("c"));
    }

    #[test]
    fn a_group_holds_at_most_members_max() {
        let mut gs = Groups::new(7);
        for _ in 0..MEMBERS_MAX {
            let mut j = join("");
            j.id_required = false;
            gs.join(0, &key(), j).unwrap();
        }
        let mut j = join("");
        j.id_required = false;
        assert_eq!(gs.join(0, &key(), j).unwrap_err().error, GROUP_MAX_SIZE_REACHED);
    }
}
