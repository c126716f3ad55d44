//! The replicated metadata and the one function that changes it, sans-IO:
//! an [`Envelope`] (who, when, what) in, a result out. Every control-plane
//! node applies the same committed envelopes in the same order and so
//! holds the same [`Metadata`]; nothing here reads a clock or a random
//! source (the proposer puts `now_ms` and any key material in the
//! envelope).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::*;
use crate::placement::{Candidate, Cluster};
use crate::rbac::{Action, Grant, Grouping, Object, Policy, RbacError, Rules};
use felix_model::names::name_problem;

// `run` routes each command to the file of its family.
mod access;
mod bridges;
mod brokers;
mod encryption;
mod resources;
mod tenancy;

/// Changes the feed keeps; a broker further behind takes a new snapshot.
pub const CHANGES_KEPT_MAX: usize = 4096;
/// Audit entries kept in the replicated state (oldest dropped first).
pub const AUDIT_KEPT_MAX: usize = 10_000;
/// Audit entries kept per tenant, apart from the global log: one tenant's
/// refused requests cannot push another tenant's history out.
pub const TENANT_AUDIT_KEPT_MAX: usize = 1_000;
/// Signing keys one tenant may have at once (the signer plus retiring ones).
pub const KEYS_PER_TENANT_MAX: usize = 4;

/// A command with who asked and when (the proposer's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub actor: String,
    pub now_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Creates or updates a tenant; a new tenant's first signing key is
    /// `key` (the proposer makes one; an update ignores it).
    PutTenant {
        tenant: String,
        spec: TenantSpec,
        key: Option<SigningKey>,
        /// Keep the quotas the tenant has (a change by someone other than
        /// the operator, who alone sets quotas).
        #[serde(default)]
        keep_quotas: bool,
        /// A data key's material (the proposer draws one whenever `spec`
        /// has encryption): used when the tenant has no data key under
        /// the spec's master key yet, ignored otherwise.
        #[serde(default)]
        data_key: Option<String>,
    },
    DeleteTenant {
        tenant: String,
    },
    PutNamespace {
        tenant: String,
        namespace: String,
        spec: NamespaceSpec,
        /// As for `PutTenant` (a new namespace then has none).
        #[serde(default)]
        keep_quotas: bool,
    },
    DeleteNamespace {
        tenant: String,
        namespace: String,
    },
    CreateStream {
        tenant: String,
        namespace: String,
        stream: String,
        spec: StreamSpec,
    },
    UpdateStream {
        tenant: String,
        namespace: String,
        stream: String,
        update: StreamUpdate,
    },
    DeleteStream {
        tenant: String,
        namespace: String,
        stream: String,
    },
    CreateCache {
        tenant: String,
        namespace: String,
        cache: String,
        spec: CacheSpec,
    },
    DeleteCache {
        tenant: String,
        namespace: String,
        cache: String,
    },
    /// Makes `broker` (one of its replicas) shard `shard`'s preferred
    /// leader, pinned there: the stream's or cache's (named `name`).
    TransferLeader {
        tenant: String,
        namespace: String,
        name: String,
        shard: u32,
        broker: u32,
    },
    RegisterBroker {
        registration: BrokerRegistration,
    },
    SetBrokerStatus {
        broker: u32,
        status: BrokerStatus,
    },
    /// Moves every replica and leadership off `broker`, then removes it
    /// from the registry; its id is never registered again.
    Decommission {
        broker: u32,
    },
    /// A broker has finished a move: `leaving` replicas of `group` are out.
    MoveDone {
        group: u64,
        broker: u32,
    },
    /// Re-place replicas of brokers down for `grace_ms` or draining, make
    /// the next moves of a rebalance in progress (each broker in at most
    /// `moves_per_broker_max` at once; 0: the default), move leaderships
    /// off draining brokers, drop retired keys.
    Reconcile {
        grace_ms: u64,
        #[serde(default)]
        moves_per_broker_max: u32,
    },
    /// Even out preferred leaders across active brokers now, and with a
    /// `goal`, replicas too (moved by the following reconciliations).
    Rebalance {
        #[serde(default)]
        goal: Option<crate::rebalance::Goal>,
    },
    PutIdpIssuer {
        tenant: String,
        issuer: IdpIssuer,
    },
    DeleteIdpIssuer {
        tenant: String,
        issuer: String,
    },
    /// `key` becomes the signer; the previous signer keeps verifying for
    /// `overlap_ms`.
    RotateKey {
        tenant: String,
        key: SigningKey,
        overlap_ms: u64,
    },
    /// A new data key of `material` seals the tenant's new records; the
    /// older ones stay to open what they sealed. `due_only`: only if the
    /// tenant's rotation period has passed since its newest key was made
    /// (the leader's scheduled rotation; a repeat is then a no-op).
    RotateDataKey {
        tenant: String,
        material: String,
        #[serde(default)]
        due_only: bool,
    },
    AddPolicy {
        tenant: String,
        caller: Vec<Grant>,
        policy: Policy,
    },
    RemovePolicy {
        tenant: String,
        caller: Vec<Grant>,
        policy: Policy,
    },
    AddGrouping {
        tenant: String,
        caller: Vec<Grant>,
        grouping: Grouping,
    },
    RemoveGrouping {
        tenant: String,
        caller: Vec<Grant>,
        grouping: Grouping,
    },
    /// Day 0: a tenant, its IdPs, its first admins and its first key.
    Bootstrap {
        tenant: String,
        spec: TenantSpec,
        issuers: Vec<IdpIssuer>,
        admins: Vec<String>,
        key: SigningKey,
    },
    /// Creates bridge `name` (its spec's target carries the token). A
    /// bridge is never changed but for pausing: an existing name with
    /// the same spec is the same create, with another a conflict.
    PutBridge {
        name: String,
        spec: BridgeSpec,
    },
    SetBridgePaused {
        name: String,
        paused: bool,
    },
    DeleteBridge {
        name: String,
    },
}

impl Command {
    /// The tenant a command belongs to, if any (cluster-level ones have
    /// none).
    pub fn tenant(&self) -> Option<&str> {
        use Command::*;
        match self {
            PutTenant { tenant, .. }
            | DeleteTenant { tenant }
            | PutNamespace { tenant, .. }
            | DeleteNamespace { tenant, .. }
            | CreateStream { tenant, .. }
            | UpdateStream { tenant, .. }
            | DeleteStream { tenant, .. }
            | CreateCache { tenant, .. }
            | DeleteCache { tenant, .. }
            | TransferLeader { tenant, .. }
            | PutIdpIssuer { tenant, .. }
            | DeleteIdpIssuer { tenant, .. }
            | RotateKey { tenant, .. }
            | RotateDataKey { tenant, .. }
            | AddPolicy { tenant, .. }
            | RemovePolicy { tenant, .. }
            | AddGrouping { tenant, .. }
            | RemoveGrouping { tenant, .. }
            | Bootstrap { tenant, .. } => Some(tenant),
            PutBridge { spec, .. } => Some(&spec.tenant),
            // Named by the bridge alone: its tenant is in the metadata
            // (`Metadata::audited_tenant`).
            SetBridgePaused { .. } | DeleteBridge { .. } => None,
            RegisterBroker { .. }
            | SetBrokerStatus { .. }
            | Decommission { .. }
            | MoveDone { .. }
            | Reconcile { .. }
            | Rebalance { .. } => None,
        }
    }

    /// Whether it refuses, when it does, before it has changed anything,
    /// so it may be applied to the metadata itself instead of a copy. The
    /// ones whose apply is hot (creates, deletes, the leader's periodic
    /// `Reconcile`, broker status) are written so; tenancy and access
    /// commands, rare and small, are applied to a copy.
    pub fn refuses_before_it_changes(&self) -> bool {
        use Command::*;
        match self {
            CreateStream { .. }
            | UpdateStream { .. }
            | DeleteStream { .. }
            | CreateCache { .. }
            | DeleteCache { .. }
            | TransferLeader { .. }
            | RegisterBroker { .. }
            | SetBrokerStatus { .. }
            | Decommission { .. }
            | MoveDone { .. }
            | Reconcile { .. }
            | Rebalance { .. }
            | PutBridge { .. }
            | SetBridgePaused { .. }
            | DeleteBridge { .. } => true,
            PutTenant { .. }
            | DeleteTenant { .. }
            | PutNamespace { .. }
            | DeleteNamespace { .. }
            | PutIdpIssuer { .. }
            | DeleteIdpIssuer { .. }
            | RotateKey { .. }
            | RotateDataKey { .. }
            | AddPolicy { .. }
            | RemovePolicy { .. }
            | AddGrouping { .. }
            | RemoveGrouping { .. }
            | Bootstrap { .. } => false,
        }
    }

    /// A short description for the audit log (no key material, no
    /// bridge token).
    fn summary(&self) -> String {
        if let Some(s) = self.bridge_summary() {
            return s;
        }
        let v = serde_json::to_value(self).unwrap_or_default();
        let op = v.get("op").and_then(|o| o.as_str()).unwrap_or("?").to_owned();
        let mut parts = vec![op];
        for k in ["tenant", "namespace", "stream", "cache", "broker", "group"] {
            if let Some(x) = v.get(k) {
                parts.push(format!("{k}={x}"));
            }
        }
        parts.join(" ")
    }
}

/// Why a command was refused; the API maps `kind` to a status code.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[error("{message}")]
pub struct ApplyError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    Invalid,
    NotFound,
    Conflict,
    Forbidden,
    /// A tenant's or namespace's quota would be passed.
    QuotaExceeded,
}

impl ApplyError {
    pub fn invalid(m: impl Into<String>) -> ApplyError {
        ApplyError {
            kind: ErrorKind::Invalid,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> ApplyError {
        ApplyError {
            kind: ErrorKind::NotFound,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> ApplyError {
        ApplyError {
            kind: ErrorKind::Conflict,
            message: m.into(),
        }
    }
    pub fn quota(m: impl Into<String>) -> ApplyError {
        ApplyError {
            kind: ErrorKind::QuotaExceeded,
            message: format!("quota exceeded: {}", m.into()),
        }
    }
}

impl From<RbacError> for ApplyError {
    fn from(e: RbacError) -> Self {
        let kind = match e {
            RbacError::OutOfScope { .. } | RbacError::GroupOutOfScope { .. } | RbacError::NothingGranted => {
                ErrorKind::Forbidden
            }
            _ => ErrorKind::Invalid,
        };
        ApplyError {
            kind,
            message: e.to_string(),
        }
    }
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The metadata version after it (unchanged if it changed nothing).
    pub version: u64,
    /// Whether anything changed (a repeated create of the same spec does
    /// not).
    pub changed: bool,
    /// Shard placements made or moved, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<Move>,
}

/// A replica moving from one broker to another (`from` absent: new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub group: u64,
    pub from: Option<u32>,
    pub to: u32,
}

/// One entry of the change feed: the new state of one object (`None`:
/// deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    Tenant {
        tenant: String,
        quotas: Option<Quotas>,
    },
    Namespace {
        tenant: String,
        namespace: String,
        quotas: Option<Quotas>,
    },
    Stream {
        tenant: String,
        namespace: String,
        stream: String,
        value: Option<Stream>,
    },
    Cache {
        tenant: String,
        namespace: String,
        cache: String,
        value: Option<Cache>,
    },
    Broker {
        broker: u32,
        value: Option<Broker>,
    },
    /// The tenant's signing keys changed: refetch its JWKS.
    Keys {
        tenant: String,
    },
    /// The tenant's encryption or data keys changed: new records are
    /// sealed under the last of `keys` while `encryption` is on; every key
    /// opens what it sealed. (A deleted tenant is a `Tenant` change with
    /// no quotas: its keys are forgotten with the rest of it.)
    DataKeys {
        tenant: String,
        encryption: Option<EncryptionSpec>,
        keys: Vec<DataKey>,
    },
    /// A bridge made, paused or resumed (`value` whole, its target's token
    /// included: brokers carry it and dial with it), or deleted (`None`).
    Bridge {
        name: String,
        value: Option<Bridge>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: u64,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub version: u64,
    pub at_ms: u64,
    pub actor: String,
    pub operation: String,
    /// `ok`, or the refusal's message.
    pub outcome: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u64,
    pub tenants: BTreeMap<String, Tenant>,
    pub brokers: BTreeMap<u32, Broker>,
    /// The next shard group id (0 is no group: shard ids start at 1).
    pub next_group: u64,
    pub changes: VecDeque<Versioned>,
    pub audit: VecDeque<AuditEntry>,
    /// Each tenant's own audit log (what `/v1/tenants/{t}/audit` shows),
    /// kept apart from `tenants` so applying a change does not copy it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_audit: BTreeMap<String, VecDeque<AuditEntry>>,
    /// A replica rebalance in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<crate::rebalance::Goal>,
    /// Ids of decommissioned brokers: never registered again.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub retired_brokers: std::collections::BTreeSet<u32>,
    /// The next data key id (0 is no key: ids start at 1; a state from
    /// before data keys has none, so 0, read as 1).
    #[serde(default)]
    pub next_data_key_id: u32,
    /// Bridges by name (a state from before bridges has none).
    #[serde(default)]
    pub bridges: BTreeMap<String, Bridge>,
    /// Replicas and preferred leaderships per broker, derived from the
    /// placements and kept with them, so a create does not count every
    /// placement again.
    #[serde(skip)]
    load: Load,
}

/// Per broker: (replicas, preferred leaderships) over every placement,
/// leaving replicas included; `None` until counted, and again after a
/// change that moves replicas around many placements at once (the broker
/// commands), which is rare beside creates and deletes.
///
/// Derived, so it is never part of what a metadata is: two metadata with
/// the same placements are equal whether or not either has counted.
#[derive(Debug, Clone, Default)]
struct Load(Option<BTreeMap<u32, (u32, u32)>>);

impl PartialEq for Load {
    fn eq(&self, _: &Load) -> bool {
        true
    }
}

impl Eq for Load {}

impl Load {
    /// Adds or takes away one placement's replicas, if counted.
    fn count(&mut self, p: &ShardPlacement, add: bool) {
        let Some(load) = &mut self.0 else {
            return;
        };
        for (i, r) in p.replicas.iter().chain(p.leaving.iter()).enumerate() {
            let e = load.entry(*r).or_default();
            let leader = u32::from(i == 0);
            if add {
                e.0 += 1;
                e.1 += leader;
            } else {
                e.0 =
                    e.0.checked_sub(1)
                        .expect("a placement counted before is taken away");
                e.1 =
                    e.1.checked_sub(leader)
                        .expect("a leadership counted before is taken away");
                if e.0 == 0 {
                    load.remove(r);
                }
            }
        }
    }
}

/// What streams and caches share in the metadata: a spec, a placement of
/// their shards on brokers, a map of them in their namespace, and the
/// change brokers follow. One create and one delete path serve both.
pub(crate) trait Placed: Clone + Serialize + Send + Sync + 'static {
    type Spec: Clone + PartialEq + serde::de::DeserializeOwned + Send;
    /// What it is called in names and messages, and what the other is.
    const KIND: &'static str;
    const OTHER: &'static str;
    /// Said after "exists with another spec".
    const EXISTS_HINT: &'static str;
    fn validate(spec: &Self::Spec) -> Result<(), String>;
    /// Shards and replication factor.
    fn shape(spec: &Self::Spec) -> (u32, u32);
    /// How it routes keys, as asked (`None`: the default) or as stored
    /// (`None`: made before routings had a name, so FNV-1a).
    fn routing(spec: &Self::Spec) -> Option<felix_model::KeyRouting>;
    /// `spec` with its replication factor and key routing set (a create
    /// that asked for the defaults is stored with what they became).
    fn settled(spec: &Self::Spec, rf: u32, routing: Option<felix_model::KeyRouting>) -> Self::Spec;
    fn placed(spec: Self::Spec, placement: Vec<ShardPlacement>) -> Self;
    fn placement(&self) -> &[ShardPlacement];
    fn spec(&self) -> &Self::Spec;
    fn of(n: &Namespace) -> &BTreeMap<String, Self>;
    fn of_mut(n: &mut Namespace) -> &mut BTreeMap<String, Self>;
    /// Whether the other kind holds `name` in `n`.
    fn other_holds(n: &Namespace, name: &str) -> bool;
    fn change(tenant: &str, namespace: &str, name: &str, value: Option<Self>) -> Change;
    /// The command that creates it, as the API proposes it (the API is
    /// the `server` feature's, so without it nothing calls these two).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    fn create(tenant: String, namespace: String, name: String, spec: Self::Spec) -> Command;
    /// Its RBAC object.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    fn object(tenant: &str, namespace: &str, name: &str) -> Object;
}

/// The two implementations differ only in names: which map, which change,
/// which command, which RBAC object.
macro_rules! placed {
    ($ty:ident, $spec:ident, $map:ident, $other:ident, $change:ident { $field:ident }, $create:ident,
     $object:ident, $kind:literal, $other_kind:literal, $hint:literal) => {
        impl Placed for $ty {
            type Spec = $spec;
            const KIND: &'static str = $kind;
            const OTHER: &'static str = $other_kind;
            const EXISTS_HINT: &'static str = $hint;
            fn validate(spec: &$spec) -> Result<(), String> {
                spec.validate()
            }
            fn shape(spec: &$spec) -> (u32, u32) {
                (spec.shards, spec.replication_factor)
            }
            fn routing(spec: &$spec) -> Option<felix_model::KeyRouting> {
                spec.key_routing
            }
            fn settled(spec: &$spec, rf: u32, key_routing: Option<felix_model::KeyRouting>) -> $spec {
                $spec {
                    replication_factor: rf,
                    key_routing,
                    ..spec.clone()
                }
            }
            fn placed(spec: $spec, placement: Vec<ShardPlacement>) -> $ty {
                $ty { spec, placement }
            }
            fn placement(&self) -> &[ShardPlacement] {
                &self.placement
            }
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn of(n: &Namespace) -> &BTreeMap<String, $ty> {
                &n.$map
            }
            fn of_mut(n: &mut Namespace) -> &mut BTreeMap<String, $ty> {
                &mut n.$map
            }
            fn other_holds(n: &Namespace, name: &str) -> bool {
                n.$other.contains_key(name)
            }
            fn change(tenant: &str, namespace: &str, name: &str, value: Option<$ty>) -> Change {
                Change::$change {
                    tenant: tenant.to_owned(),
                    namespace: namespace.to_owned(),
                    $field: name.to_owned(),
                    value,
                }
            }
            fn create(tenant: String, namespace: String, $field: String, spec: $spec) -> Command {
                Command::$create {
                    tenant,
                    namespace,
                    $field,
                    spec,
                }
            }
            fn object(tenant: &str, namespace: &str, name: &str) -> Object {
                Object::$object(tenant, namespace, name)
            }
        }
    };
}

placed!(
    Stream,
    StreamSpec,
    streams,
    caches,
    Stream { stream },
    CreateStream,
    stream,
    "stream",
    "cache",
    "; update its retention with PATCH"
);
placed!(
    Cache,
    CacheSpec,
    caches,
    streams,
    Cache { cache },
    CreateCache,
    cache,
    "cache",
    "stream",
    ""
);

fn check_names(names: &[(&str, &str)]) -> Result<(), ApplyError> {
    for (what, n) in names {
        if let Some(why) = name_problem(n) {
            return Err(ApplyError::invalid(format!("{what} {n:?}: {why}")));
        }
    }
    Ok(())
}

/// The grants a tenant's administrator holds (bootstrap admins, and the
/// cluster operator acting inside a tenant).
pub fn tenant_admin_grants(tenant: &str) -> Vec<Grant> {
    Action::ALL
        .iter()
        .map(|a| Grant {
            action: *a,
            object: Object::Tenant(tenant.to_owned()),
        })
        .collect()
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata {
            next_group: 1,
            next_data_key_id: 1,
            ..Metadata::default()
        }
    }

    /// Applies one committed envelope. A refusal changes nothing but the
    /// audit log.
    pub fn apply(&mut self, env: &Envelope) -> Result<Applied, ApplyError> {
        self.apply_as(env, env.command.refuses_before_it_changes())
    }

    /// Whether applying `env` would change anything, found on a copy of
    /// the placements and brokers (not the feed or audit logs).
    pub fn would_change(&self, env: &Envelope) -> bool {
        let mut trial = self.clone_without_logs();
        trial.apply(env).is_ok_and(|a| a.changed)
    }

    /// Whether a `Reconcile` at `now_ms` would change anything: what
    /// [`Metadata::would_change`] says, without a copy of the metadata in
    /// the usual case (no broker down, draining or decommissioning, no
    /// rebalance, no key to retire), where only leader balancing could
    /// change something and is tried on a copy of the load alone.
    pub fn reconcile_would_change(&self, now_ms: u64, grace_ms: u64, moves_per_broker_max: u32) -> bool {
        let calm = self.rebalance.is_none()
            && self
                .brokers
                .values()
                .all(|b| b.status == BrokerStatus::Active && !b.decommissioning)
            && self
                .tenants
                .values()
                .all(|t| t.keys.iter().all(|k| k.retire_at_ms.is_none_or(|r| r > now_ms)));
        if !calm {
            return self.would_change(&Envelope {
                actor: String::new(),
                now_ms,
                command: Command::Reconcile {
                    grace_ms,
                    moves_per_broker_max,
                },
            });
        }
        // `balance_leaders`, on a copy of the load and of one replica
        // list at a time.
        let mut cluster = self.cluster_with(&self.count_load());
        let mut replicas = Vec::new();
        self.placements().any(|p| {
            let chosen = p.leader_pinned
                && p.replicas
                    .first()
                    .is_some_and(|b| cluster.get(*b).is_some_and(|c| c.accepting));
            replicas.clone_from(&p.replicas);
            !chosen && cluster.balance_leader(&mut replicas)
        })
    }

    /// `in_place`: run the command on the metadata itself, which is right
    /// only for a command that refuses before it changes anything (a
    /// test holds each such command to it); otherwise on a copy, kept
    /// only if the command succeeds.
    fn apply_as(&mut self, env: &Envelope, in_place: bool) -> Result<Applied, ApplyError> {
        let before = self.version;
        let goal_before = self.rebalance.clone();
        // Found before the command runs: a bridge deleted is gone after.
        let audited_tenant = self.audited_tenant(&env.command);
        let mut moves = Vec::new();
        let result = if in_place {
            self.run(env, &mut moves)
        } else {
            let mut scratch = self.clone_without_logs();
            let result = scratch.run(env, &mut moves);
            if result.is_ok() {
                self.tenants = scratch.tenants;
                self.brokers = scratch.brokers;
                self.next_group = scratch.next_group;
                self.rebalance = scratch.rebalance;
                self.retired_brokers = scratch.retired_brokers;
                self.next_data_key_id = scratch.next_data_key_id;
                self.bridges = scratch.bridges;
                self.load = scratch.load;
            }
            result
        };
        let audited = !matches!(
            env.command,
            Command::Reconcile { .. }
                | Command::SetBrokerStatus { .. }
                | Command::MoveDone { .. }
                | Command::RotateDataKey { due_only: true, .. }
        );
        match result {
            Ok(changes) => {
                let changed = !changes.is_empty();
                // A rebalance begun or ended changes no resource.
                let goal_changed = self.rebalance != goal_before;
                if changed {
                    self.version += 1;
                    for change in &changes {
                        match change {
                            Change::Tenant { tenant, quotas: None } => self.forget_data_keys(tenant),
                            Change::Bridge { name, value: None } => self.forget_bridge_token(name),
                            _ => {}
                        }
                    }
                    for change in changes {
                        self.changes.push_back(Versioned {
                            version: self.version,
                            change,
                        });
                    }
                    while self.changes.len() > CHANGES_KEPT_MAX {
                        self.changes.pop_front();
                    }
                }
                if audited || changed {
                    self.audit(env, audited_tenant.as_deref(), "ok".into());
                }
                Ok(Applied {
                    version: self.version,
                    changed: self.version != before || goal_changed,
                    moves,
                })
            }
            Err(e) => {
                if audited {
                    self.audit(env, audited_tenant.as_deref(), e.message.clone());
                }
                Err(e)
            }
        }
    }

    /// `tenant`: the tenant whose own log also keeps the entry, if any.
    fn audit(&mut self, env: &Envelope, tenant: Option<&str>, outcome: String) {
        let entry = AuditEntry {
            version: self.version,
            at_ms: env.now_ms,
            actor: env.actor.clone(),
            operation: env.command.summary(),
            outcome,
        };
        // Only a tenant that exists (after this change) keeps a log: a
        // request naming an unknown tenant cannot make one.
        if let Some(t) = tenant.filter(|t| self.tenants.contains_key(*t)) {
            let log = self.tenant_audit.entry(t.to_owned()).or_default();
            log.push_back(entry.clone());
            while log.len() > TENANT_AUDIT_KEPT_MAX {
                log.pop_front();
            }
        }
        if let Command::DeleteTenant { tenant } = &env.command {
            if !self.tenants.contains_key(tenant) {
                self.tenant_audit.remove(tenant);
            }
        }
        self.audit.push_back(entry);
        while self.audit.len() > AUDIT_KEPT_MAX {
            self.audit.pop_front();
        }
    }

    /// A copy to apply into, so a refusal half-way leaves nothing behind.
    /// The feed and audit log are not copied (they only grow on success).
    fn clone_without_logs(&self) -> Metadata {
        Metadata {
            version: self.version,
            tenants: self.tenants.clone(),
            brokers: self.brokers.clone(),
            next_group: self.next_group,
            changes: VecDeque::new(),
            audit: VecDeque::new(),
            tenant_audit: BTreeMap::new(),
            rebalance: self.rebalance.clone(),
            retired_brokers: self.retired_brokers.clone(),
            next_data_key_id: self.next_data_key_id,
            bridges: self.bridges.clone(),
            load: self.load.clone(),
        }
    }

    /// The changes since `version`, or `None` when the feed no longer
    /// reaches back that far (the caller takes a snapshot).
    pub fn changes_since(&self, version: u64) -> Option<Vec<Versioned>> {
        if version >= self.version {
            return Some(Vec::new());
        }
        let oldest = self.changes.front().map_or(self.version + 1, |c| c.version);
        if version + 1 < oldest {
            return None;
        }
        Some(
            self.changes
                .iter()
                .filter(|c| c.version > version)
                .cloned()
                .collect(),
        )
    }

    pub fn tenant(&self, t: &str) -> Result<&Tenant, ApplyError> {
        self.tenants
            .get(t)
            .ok_or_else(|| ApplyError::not_found(format!("no tenant {t:?}")))
    }

    pub fn namespace(&self, t: &str, n: &str) -> Result<&Namespace, ApplyError> {
        self.tenant(t)?
            .namespaces
            .get(n)
            .ok_or_else(|| ApplyError::not_found(format!("no namespace {t}/{n}")))
    }

    fn tenant_mut(&mut self, t: &str) -> Result<&mut Tenant, ApplyError> {
        self.tenants
            .get_mut(t)
            .ok_or_else(|| ApplyError::not_found(format!("no tenant {t:?}")))
    }

    fn namespace_mut(&mut self, t: &str, n: &str) -> Result<&mut Namespace, ApplyError> {
        self.tenant_mut(t)?
            .namespaces
            .get_mut(n)
            .ok_or_else(|| ApplyError::not_found(format!("no namespace {t}/{n}")))
    }

    pub fn placements(&self) -> impl Iterator<Item = &ShardPlacement> {
        self.tenants.values().flat_map(|t| {
            t.namespaces.values().flat_map(|n| {
                n.streams
                    .values()
                    .flat_map(|s| s.placement.iter())
                    .chain(n.caches.values().flat_map(|c| c.placement.iter()))
            })
        })
    }

    /// Replicas and preferred leaderships per broker, counted over every
    /// placement.
    fn count_load(&self) -> BTreeMap<u32, (u32, u32)> {
        let mut load = Load(Some(BTreeMap::new()));
        for p in self.placements() {
            load.count(p, true);
        }
        load.0.unwrap_or_default()
    }

    /// The brokers as placement sees them, with today's load (counted
    /// once, then kept as placements are added and removed).
    pub fn cluster(&mut self) -> Cluster {
        if self.load.0.is_none() {
            self.load.0 = Some(self.count_load());
        }
        let load = self.load.0.as_ref().expect("counted above");
        #[cfg(test)]
        assert_eq!(*load, self.count_load(), "the kept load is the placements' load");
        self.cluster_with(load)
    }

    /// The brokers as placement sees them, carrying `load`.
    fn cluster_with(&self, load: &BTreeMap<u32, (u32, u32)>) -> Cluster {
        Cluster::new(self.brokers.values().map(|b| {
            let (replicas, leaders) = load.get(&b.registration.id).copied().unwrap_or_default();
            Candidate {
                id: b.registration.id,
                zone: b.registration.zone.clone(),
                accepting: b.status == BrokerStatus::Active,
                shards_max: b.registration.shards_max,
                replicas,
                leaders,
            }
        }))
    }

    fn run(&mut self, env: &Envelope, moves: &mut Vec<Move>) -> Result<Vec<Change>, ApplyError> {
        use Command::*;
        match &env.command {
            PutTenant { .. } | DeleteTenant { .. } | PutNamespace { .. } | DeleteNamespace { .. } => {
                self.run_tenancy(env)
            }
            CreateStream { .. }
            | UpdateStream { .. }
            | DeleteStream { .. }
            | TransferLeader { .. }
            | CreateCache { .. }
            | DeleteCache { .. } => self.run_resources(env, moves),
            RegisterBroker { .. }
            | SetBrokerStatus { .. }
            | MoveDone { .. }
            | Reconcile { .. }
            | Decommission { .. }
            | Rebalance { .. } => self.run_brokers(env, moves),
            PutIdpIssuer { .. }
            | DeleteIdpIssuer { .. }
            | RotateKey { .. }
            | AddPolicy { .. }
            | RemovePolicy { .. }
            | AddGrouping { .. }
            | RemoveGrouping { .. }
            | Bootstrap { .. } => self.run_access(env),
            RotateDataKey { .. } => self.run_encryption(env),
            PutBridge { .. } | SetBridgePaused { .. } | DeleteBridge { .. } => self.run_bridges(env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::new_signing_key;

    fn env(now_ms: u64, command: Command) -> Envelope {
        Envelope {
            actor: "test".into(),
            now_ms,
            command,
        }
    }

    fn broker(id: u32, zone: &str) -> Command {
        Command::RegisterBroker {
            registration: BrokerRegistration {
                id,
                client_addr: format!("127.0.0.1:{}", 7000 + id),
                raft_addr: format!("127.0.0.1:{}", 8000 + id),
                zone: Some(zone.into()),
                shards_max: 100,
                node_id: u64::from(id) * 1000 + 1,
                redis_addr: None,
                kafka_addr: None,
                region: "local".into(),
            },
        }
    }

    /// A tenant `t` with namespace `ns` and three brokers in three zones.
    fn cluster() -> Metadata {
        let mut m = Metadata::new();
        for (id, z) in [(1, "a"), (2, "b"), (3, "c")] {
            m.apply(&env(0, broker(id, z))).unwrap();
        }
        m.apply(&env(
            0,
            Command::PutTenant {
                tenant: "t".into(),
                spec: TenantSpec::default(),
                key: Some(new_signing_key("k1", [1; 32])),
                keep_quotas: false,
                data_key: None,
            },
        ))
        .unwrap();
        m.apply(&env(
            0,
            Command::PutNamespace {
                tenant: "t".into(),
                namespace: "ns".into(),
                spec: NamespaceSpec::default(),
                keep_quotas: false,
            },
        ))
        .unwrap();
        m
    }

    #[test]
    fn stream_and_shard_quotas_refuse_a_create_that_would_pass_them_and_keep_what_exists() {
        let mut m = cluster();
        let put_tenant = |quotas: Quotas, keep_quotas: bool| {
            env(
                0,
                Command::PutTenant {
                    tenant: "t".into(),
                    spec: TenantSpec {
                        quotas,
                        ..TenantSpec::default()
                    },
                    key: None,
                    keep_quotas,
                    data_key: None,
                },
            )
        };
        m.apply(&put_tenant(
            Quotas {
                streams_max: Some(2),
                shards_max: Some(4),
                ..Quotas::default()
            },
            false,
        ))
        .unwrap();
        create(&mut m, "a", 3, 1).unwrap();
        let e = create(&mut m, "b", 2, 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::QuotaExceeded, "{e}");
        assert!(e.message.contains("shards_max of 4"), "{e}");
        create(&mut m, "b", 1, 1).unwrap();
        let e = create(&mut m, "c", 1, 1).unwrap_err();
        assert!(e.message.contains("streams_max is 2"), "{e}");
        // Re-creating an existing stream is not a new one.
        create(&mut m, "a", 3, 1).unwrap();
        // A namespace's own quota holds beside the tenant's.
        m.apply(&put_tenant(Quotas::default(), false)).unwrap();
        m.apply(&env(
            0,
            Command::PutNamespace {
                tenant: "t".into(),
                namespace: "ns".into(),
                spec: NamespaceSpec {
                    quotas: Quotas {
                        streams_max: Some(1),
                        ..Quotas::default()
                    },
                    ..NamespaceSpec::default()
                },
                keep_quotas: false,
            },
        ))
        .unwrap();
        let e = create(&mut m, "c", 1, 1).unwrap_err();
        assert!(e.message.contains("namespace t/ns has 2"), "{e}");
        assert_eq!(
            m.namespace("t", "ns").unwrap().streams.len(),
            2,
            "what exists is kept"
        );
        // A change that keeps quotas cannot raise them, whatever it carries.
        m.apply(&put_tenant(
            Quotas {
                streams_max: Some(9),
                ..Quotas::default()
            },
            false,
        ))
        .unwrap();
        m.apply(&put_tenant(Quotas::default(), true)).unwrap();
        assert_eq!(m.tenant("t").unwrap().spec.quotas.streams_max, Some(9));
    }

    fn create(m: &mut Metadata, name: &str, shards: u32, rf: u32) -> Result<Applied, ApplyError> {
        m.apply(&env(
            0,
            Command::CreateStream {
                tenant: "t".into(),
                namespace: "ns".into(),
                stream: name.into(),
                spec: StreamSpec {
                    shards,
                    replication_factor: rf,
                    ..StreamSpec::default()
                },
            },
        ))
    }

    /// A command drawn from a small world (two namespaces, a few names,
    /// six brokers, groups the creates made), so successes and refusals
    /// of every kind both come up.
    fn any_command(r: &mut impl FnMut(u64) -> u64) -> Command {
        let ns = ["ns", "other", "none"][r(3) as usize].to_owned();
        let name = format!("r{}", r(6));
        let t = || "t".to_owned();
        match r(17) {
            0 | 1 => Command::CreateStream {
                tenant: t(),
                namespace: ns,
                stream: name,
                spec: StreamSpec {
                    shards: 1 + r(3) as u32,
                    replication_factor: r(5) as u32,
                    ..StreamSpec::default()
                },
            },
            2 => Command::CreateCache {
                tenant: t(),
                namespace: ns,
                cache: name,
                spec: CacheSpec {
                    shards: 1 + r(2) as u32,
                    replication_factor: r(4) as u32,
                    ..CacheSpec::default()
                },
            },
            3 => Command::DeleteStream {
                tenant: t(),
                namespace: ns,
                stream: name,
            },
            4 => Command::DeleteCache {
                tenant: t(),
                namespace: ns,
                cache: name,
            },
            5 => Command::UpdateStream {
                tenant: t(),
                namespace: ns,
                stream: name,
                update: StreamUpdate {
                    retention_ms: Some(Some(1 + r(3))),
                    ..StreamUpdate::default()
                },
            },
            6 => Command::TransferLeader {
                tenant: t(),
                namespace: ns,
                name,
                shard: r(3) as u32,
                broker: 1 + r(6) as u32,
            },
            7 => broker(1 + r(7) as u32, ["a", "b", "c"][r(3) as usize]),
            8 => Command::SetBrokerStatus {
                broker: 1 + r(7) as u32,
                status: [BrokerStatus::Active, BrokerStatus::Down, BrokerStatus::Draining][r(3) as usize],
            },
            9 => Command::Decommission {
                broker: 1 + r(7) as u32,
            },
            10 => Command::MoveDone {
                group: 1 + r(20),
                broker: 1 + r(6) as u32,
            },
            14 => Command::PutBridge {
                name: format!("b{}", r(3)),
                spec: BridgeSpec {
                    tenant: ["t", "none"][r(2) as usize].to_owned(),
                    streams: vec![format!("{ns}/*")],
                    target: BridgeTarget {
                        region: "us".into(),
                        brokers: vec![format!("us{}:7070", r(2))],
                        server_name: "localhost".into(),
                        ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
                        token: String::new(),
                    },
                },
            },
            15 => Command::SetBridgePaused {
                name: format!("b{}", r(3)),
                paused: r(2) == 0,
            },
            16 => Command::DeleteBridge {
                name: format!("b{}", r(3)),
            },
            11 | 12 => Command::Reconcile {
                grace_ms: r(3) * 1000,
                moves_per_broker_max: r(3) as u32,
            },
            _ => Command::Rebalance {
                goal: (r(2) == 0).then(|| crate::rebalance::Goal {
                    strategy: crate::rebalance::Strategy::Balanced,
                    stream: (r(2) == 0).then(|| format!("t/ns/r{}", r(6))),
                    since_ms: 0,
                }),
            },
        }
    }

    #[test]
    fn commands_applied_in_place_refuse_before_they_change_anything() {
        for seed in 0..200u64 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut r = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut in_place = cluster();
            in_place
                .apply(&env(
                    0,
                    Command::PutNamespace {
                        tenant: "t".into(),
                        namespace: "other".into(),
                        spec: NamespaceSpec::default(),
                        keep_quotas: false,
                    },
                ))
                .unwrap();
            let mut copied = in_place.clone();
            let (mut refused, mut applied) = (0, 0);
            for step in 0..80u64 {
                let c = any_command(&mut r);
                let e = env(step * 700, c.clone());
                let a = in_place.apply_as(&e, c.refuses_before_it_changes());
                let b = copied.apply_as(&e, false);
                assert_eq!(a, b, "seed {seed} step {step}: {c:?}");
                assert!(
                    in_place == copied,
                    "seed {seed} step {step}: the metadata differ after {c:?}"
                );
                // The kept load is checked against a count in `cluster`.
                in_place.cluster();
                let (grace_ms, most) = (r(3) * 1000, r(3) as u32);
                let reconcile = Command::Reconcile {
                    grace_ms,
                    moves_per_broker_max: most,
                };
                assert_eq!(
                    in_place.reconcile_would_change(step * 700, grace_ms, most),
                    in_place.would_change(&env(step * 700, reconcile)),
                    "seed {seed} step {step}"
                );
                if a.is_ok() {
                    applied += 1;
                } else {
                    refused += 1;
                }
            }
            assert!(
                refused > 5 && applied > 5,
                "seed {seed}: {refused} refused, {applied} applied"
            );
        }
    }

    #[test]
    fn a_placed_shard_names_its_founders_by_the_node_ids_its_brokers_registered() {
        let mut m = cluster();
        create(&mut m, "s", 2, 3).unwrap();
        for p in &m.namespace("t", "ns").unwrap().streams["s"].placement {
            let want: Vec<u64> = p.replicas.iter().map(|b| u64::from(*b) * 1000 + 1).collect();
            assert_eq!(p.founders, want, "founders follow the replicas' order");
        }
        // A broker rebuilt under a new node id re-registers: later
        // placements name the new id, the founders already recorded stay.
        let Command::RegisterBroker { mut registration } = broker(1, "a") else {
            unreachable!()
        };
        registration.node_id = 1002;
        m.apply(&env(0, Command::RegisterBroker { registration }))
            .unwrap();
        let before = m.namespace("t", "ns").unwrap().streams["s"].placement.clone();
        assert!(before.iter().all(|p| !p.founders.contains(&1002)));
        create(&mut m, "later", 1, 3).unwrap();
        let later = &m.namespace("t", "ns").unwrap().streams["later"].placement[0];
        assert!(later.founders.contains(&1002) && !later.founders.contains(&1001));
    }

    #[test]
    fn the_registry_refuses_a_broker_past_brokers_max_and_still_re_registers_one_it_holds() {
        let mut m = Metadata::new();
        for id in 1..=crate::model::BROKERS_MAX as u32 {
            m.apply(&env(0, broker(id, "a"))).unwrap();
        }
        let e = m.apply(&env(0, broker(crate::model::BROKERS_MAX as u32 + 1, "a")));
        assert!(e.unwrap_err().to_string().contains("BROKERS_MAX"));
        let Command::RegisterBroker { mut registration } = broker(7, "a") else {
            unreachable!()
        };
        registration.node_id = 7777;
        assert!(
            m.apply(&env(0, Command::RegisterBroker { registration }))
                .unwrap()
                .changed
        );
    }

    #[test]
    fn a_create_without_a_replication_factor_gets_three_or_one_per_broker() {
        let rf_of = |m: &Metadata, name: &str| {
            let s = &m.namespace("t", "ns").unwrap().streams[name];
            assert!(s
                .placement
                .iter()
                .all(|p| p.replicas.len() as u32 == s.spec.replication_factor));
            s.spec.replication_factor
        };
        let mut m = cluster();
        create(&mut m, "three", 2, 0).unwrap();
        assert_eq!(rf_of(&m, "three"), 3, "three brokers: three copies");
        // Asking for the default again is the same create, not a conflict.
        assert!(!create(&mut m, "three", 2, 0).unwrap().changed);
        assert!(!create(&mut m, "three", 2, 3).unwrap().changed);
        for (id, z) in [(4, "a"), (5, "b")] {
            m.apply(&env(0, broker(id, z))).unwrap();
        }
        create(&mut m, "five", 1, 0).unwrap();
        assert_eq!(rf_of(&m, "five"), 3, "five brokers: still three");
        create(&mut m, "wide", 1, 5).unwrap();
        assert_eq!(rf_of(&m, "wide"), 5, "an explicit factor is kept");
        let e = create(&mut m, "six", 1, 6).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("needs 6 active brokers"), "{}", e.message);
        let e = create(&mut m, "eight", 1, 8).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(
            e.message.contains("replication_factor must be 1 to 7"),
            "{}",
            e.message
        );
        for b in [2, 3, 4, 5] {
            m.apply(&env(
                0,
                Command::SetBrokerStatus {
                    broker: b,
                    status: BrokerStatus::Down,
                },
            ))
            .unwrap();
        }
        create(&mut m, "one", 1, 0).unwrap();
        assert_eq!(rf_of(&m, "one"), 1, "one broker up: one copy");
        assert_eq!(
            super::resources::default_rf(0),
            1,
            "no broker: a create of 1 is refused as too few"
        );
    }

    #[test]
    fn a_create_without_a_key_routing_routes_by_slot_and_an_old_record_keeps_fnv() {
        use felix_model::KeyRouting;
        let routed =
            |m: &Metadata, name: &str| m.namespace("t", "ns").unwrap().streams[name].spec.key_routing;
        let with = |routing: Option<KeyRouting>| Command::CreateStream {
            tenant: "t".into(),
            namespace: "ns".into(),
            stream: "old".into(),
            spec: StreamSpec {
                shards: 2,
                replication_factor: 3,
                key_routing: routing,
                ..StreamSpec::default()
            },
        };
        let mut m = cluster();
        create(&mut m, "new", 2, 3).unwrap();
        assert_eq!(
            routed(&m, "new"),
            Some(KeyRouting::Slots),
            "stored as what the default became"
        );
        assert!(
            !create(&mut m, "new", 2, 3).unwrap().changed,
            "asking again is the same create"
        );
        // A record stored before routings had a name: no field, so FNV-1a.
        m.apply(&env(0, with(Some(KeyRouting::Slots)))).unwrap();
        let json = serde_json::to_string(&m.namespace("t", "ns").unwrap().streams["old"].spec).unwrap();
        let old: StreamSpec = serde_json::from_str(&json.replace(r#","key_routing":"slots""#, "")).unwrap();
        assert_eq!(old.key_routing, None);
        m.namespace_mut("t", "ns")
            .unwrap()
            .streams
            .get_mut("old")
            .unwrap()
            .spec = old;
        // Asked again without a routing it is the same stream; asked with
        // another, a conflict (a routing never changes: keys would move).
        assert!(!m.apply(&env(0, with(None))).unwrap().changed);
        let e = m.apply(&env(0, with(Some(KeyRouting::Slots)))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(!m.apply(&env(0, with(Some(KeyRouting::Fnv1a)))).unwrap().changed);
    }

    #[test]
    fn a_stream_gets_unique_groups_on_distinct_brokers_and_reaches_the_feed() {
        let mut m = cluster();
        let v0 = m.version;
        let a = create(&mut m, "orders", 3, 3).unwrap();
        assert!(a.changed && a.version == v0 + 1);
        assert_eq!(a.moves.len(), 9);
        let s = &m.namespace("t", "ns").unwrap().streams["orders"];
        let groups: Vec<u64> = s.placement.iter().map(|p| p.group).collect();
        assert_eq!(groups, vec![1, 2, 3]);
        let leaders: std::collections::BTreeSet<u32> = s.placement.iter().map(|p| p.replicas[0]).collect();
        assert_eq!(leaders.len(), 3, "one preferred leader per broker");
        // The same create again changes nothing; another spec conflicts.
        assert!(!create(&mut m, "orders", 3, 3).unwrap().changed);
        assert_eq!(
            create(&mut m, "orders", 2, 3).unwrap_err().kind,
            ErrorKind::Conflict
        );
        let feed = m.changes_since(v0).unwrap();
        assert!(matches!(
            &feed[..],
            [Versioned {
                change: Change::Stream { value: Some(_), .. },
                ..
            }]
        ));
        assert_eq!(m.changes_since(m.version).unwrap(), vec![]);
    }

    #[test]
    fn one_tenants_refusals_do_not_push_another_tenants_audit_out() {
        let mut m = cluster();
        m.apply(&env(
            0,
            Command::PutTenant {
                tenant: "u".into(),
                spec: TenantSpec::default(),
                key: Some(new_signing_key("k2", [2; 32])),
                keep_quotas: false,
                data_key: None,
            },
        ))
        .unwrap();
        let u_before = m.tenant_audit["u"].clone();
        assert_eq!(u_before.len(), 1, "u's creation");
        // Tenant t floods the global log with refusals.
        for _ in 0..AUDIT_KEPT_MAX + 10 {
            create(&mut m, "bad name", 1, 1).unwrap_err();
        }
        assert_eq!(m.audit.len(), AUDIT_KEPT_MAX);
        assert!(
            !m.audit.iter().any(|a| a.operation.contains("\"u\"")),
            "u's entry left the global log"
        );
        assert_eq!(m.tenant_audit["u"], u_before, "but not u's own");
        assert_eq!(m.tenant_audit["t"].len(), TENANT_AUDIT_KEPT_MAX);
        // A request naming a tenant that does not exist keeps no log.
        let _ = m.apply(&env(
            0,
            Command::DeleteNamespace {
                tenant: "ghost".into(),
                namespace: "x".into(),
            },
        ));
        assert!(!m.tenant_audit.contains_key("ghost"));
        // A deleted tenant's log goes with it (the global log keeps it).
        m.apply(&env(0, Command::DeleteTenant { tenant: "u".into() }))
            .unwrap();
        assert!(!m.tenant_audit.contains_key("u"));
    }

    #[test]
    fn a_refusal_changes_nothing_but_is_audited() {
        let mut m = cluster();
        let before = m.clone();
        let e = create(&mut m, "big", 2, 4).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert!(e.message.contains("needs 4 active brokers"), "{e}");
        assert_eq!(
            (m.version, &m.tenants, m.next_group),
            (before.version, &before.tenants, before.next_group)
        );
        assert_eq!(m.audit.len(), before.audit.len() + 1);
        assert_eq!(m.audit.back().unwrap().outcome, e.message);
        for (name, shards) in [("bad name", 1), (".x", 1), ("ok", 0)] {
            assert_eq!(
                create(&mut m, name, shards, 1).unwrap_err().kind,
                ErrorKind::Invalid,
                "{name}"
            );
        }
        let e = m
            .apply(&env(
                0,
                Command::DeleteNamespace {
                    tenant: "t".into(),
                    namespace: "nope".into(),
                },
            ))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[test]
    fn retention_updates_change_only_retention() {
        let mut m = cluster();
        create(&mut m, "s", 1, 1).unwrap();
        let upd: StreamUpdate = serde_json::from_str(r#"{"retention_ms": 60000}"#).unwrap();
        let cmd = |update| Command::UpdateStream {
            tenant: "t".into(),
            namespace: "ns".into(),
            stream: "s".into(),
            update,
        };
        m.apply(&env(0, cmd(upd))).unwrap();
        assert_eq!(
            m.namespace("t", "ns").unwrap().streams["s"].spec.retention_ms,
            Some(60000)
        );
        let clear: StreamUpdate = serde_json::from_str(r#"{"retention_ms": null}"#).unwrap();
        m.apply(&env(0, cmd(clear))).unwrap();
        assert_eq!(
            m.namespace("t", "ns").unwrap().streams["s"].spec.retention_ms,
            None
        );
        let zero: StreamUpdate = serde_json::from_str(r#"{"retention_bytes": 0}"#).unwrap();
        assert_eq!(m.apply(&env(0, cmd(zero))).unwrap_err().kind, ErrorKind::Invalid);
        assert!(
            serde_json::from_str::<StreamUpdate>(r#"{"shards": 3}"#).is_err(),
            "shards are fixed"
        );
    }

    #[test]
    fn a_broker_down_past_the_grace_period_has_its_replicas_replaced() {
        let mut m = cluster();
        m.apply(&env(0, broker(4, "a"))).unwrap();
        create(&mut m, "s", 4, 3).unwrap();
        let on = |m: &Metadata, b: u32| m.placements().filter(|p| p.replicas.contains(&b)).count();
        let victim = 2;
        let hosted = on(&m, victim);
        assert!(hosted > 0);
        m.apply(&env(
            1_000,
            Command::SetBrokerStatus {
                broker: victim,
                status: BrokerStatus::Down,
            },
        ))
        .unwrap();
        // Within the grace period nothing moves.
        let a = m
            .apply(&env(
                5_000,
                Command::Reconcile {
                    grace_ms: 10_000,
                    moves_per_broker_max: 0,
                },
            ))
            .unwrap();
        assert!(a.moves.is_empty());
        // Nor will it until the grace period ends, which the leader is
        // told, so it need not try again before.
        let reconcile = Command::Reconcile {
            grace_ms: 10_000,
            moves_per_broker_max: 0,
        };
        assert!(!m.would_change(&env(5_001, reconcile.clone())));
        assert!(!m.would_change(&env(10_999, reconcile.clone())));
        assert_eq!(m.reconcile_changes_at(5_001, 10_000), Some(11_000));
        assert!(m.would_change(&env(11_000, reconcile)));
        assert_eq!(m.reconcile_changes_at(11_000, 10_000), None);
        let a = m
            .apply(&env(
                11_000,
                Command::Reconcile {
                    grace_ms: 10_000,
                    moves_per_broker_max: 0,
                },
            ))
            .unwrap();
        assert_eq!(a.moves.len(), hosted);
        assert_eq!(on(&m, victim), 0);
        for p in m.placements() {
            let mut r = p.replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "still distinct: {p:?}");
        }
        let groups: Vec<u64> = a.moves.iter().map(|mv| mv.group).collect();
        assert_eq!(m.under_replicated(), groups, "leaving until the move is done");
        for g in groups {
            m.apply(&env(
                12_000,
                Command::MoveDone {
                    group: g,
                    broker: victim,
                },
            ))
            .unwrap();
        }
        assert!(m.under_replicated().is_empty());
    }

    #[test]
    fn a_new_broker_gets_its_share_a_move_at_a_time_and_zones_stay_spread() {
        // Three brokers in zones a, b, c; 6 shards at RF 3: 6 replicas each.
        let mut m = cluster();
        create(&mut m, "s", 6, 3).unwrap();
        let reconcile = |m: &mut Metadata, now: u64| {
            m.apply(&env(
                now,
                Command::Reconcile {
                    grace_ms: 60_000,
                    moves_per_broker_max: 1,
                },
            ))
            .unwrap()
        };
        reconcile(&mut m, 1);
        assert_eq!(m.rebalance, None, "nothing to move among the first three");
        // A fourth broker joins, in zone a.
        m.apply(&env(10, broker(4, "a"))).unwrap();
        assert!(m.rebalance.is_some(), "a new broker starts a rebalance");
        let mut rounds = 0;
        while m.rebalance.is_some() {
            let a = reconcile(&mut m, 20 + rounds);
            // Broker 4 takes part in every move: one at a time.
            assert!(a.moves.len() <= 1, "{:?}", a.moves);
            for mv in &a.moves {
                assert_eq!(mv.to, 4);
                let done = Command::MoveDone {
                    group: mv.group,
                    broker: mv.from.unwrap(),
                };
                m.apply(&env(30 + rounds, done)).unwrap();
            }
            rounds += 1;
            assert!(rounds < 20, "the rebalance ends");
        }
        let on = |b: u32| m.placements().filter(|p| p.replicas.contains(&b)).count();
        // Zones first: only broker 1 (also zone a) could give replicas up
        // without a shard losing a zone, so it and 4 share zone a's six.
        assert_eq!((on(1), on(2), on(3), on(4)), (3, 6, 6, 3));
        for p in m.placements() {
            let zones: std::collections::BTreeSet<_> = p
                .replicas
                .iter()
                .map(|b| m.brokers[b].registration.zone.clone())
                .collect();
            assert_eq!(zones.len(), 3, "{p:?}");
        }
        // A rebalance of a stream that does not exist is refused.
        let goal = crate::rebalance::Goal {
            strategy: crate::rebalance::Strategy::MinimizeMovement,
            stream: Some("t/ns/nope".into()),
            since_ms: 0,
        };
        let e = m
            .apply(&env(99, Command::Rebalance { goal: Some(goal) }))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(m.rebalance, None);
    }

    #[test]
    fn a_decommissioned_broker_leaves_the_registry_once_empty_and_its_id_is_never_reused() {
        let mut m = cluster();
        m.apply(&env(0, broker(4, "a"))).unwrap();
        create(&mut m, "s", 4, 3).unwrap();
        let on = |m: &Metadata, b: u32| {
            m.placements()
                .filter(|p| p.replicas.contains(&b) || p.leaving.contains(&b))
                .count()
        };
        assert!(on(&m, 4) > 0);
        m.apply(&env(1, Command::Decommission { broker: 4 })).unwrap();
        assert_eq!(m.brokers[&4].status, BrokerStatus::Draining);
        assert!(
            m.placements().all(|p| p.replicas[0] != 4),
            "leaderships move at once"
        );
        let a = m
            .apply(&env(
                2,
                Command::Reconcile {
                    grace_ms: 60_000,
                    moves_per_broker_max: 0,
                },
            ))
            .unwrap();
        assert!(!a.moves.is_empty() && a.moves.iter().all(|mv| mv.from == Some(4)));
        // Still registered while its replicas are leaving.
        assert!(m.brokers.contains_key(&4));
        for mv in &a.moves {
            let done = Command::MoveDone {
                group: mv.group,
                broker: 4,
            };
            m.apply(&env(3, done)).unwrap();
        }
        assert_eq!(on(&m, 4), 0);
        m.apply(&env(
            4,
            Command::Reconcile {
                grace_ms: 60_000,
                moves_per_broker_max: 0,
            },
        ))
        .unwrap();
        assert!(!m.brokers.contains_key(&4), "gone from the registry");
        assert!(m.retired_brokers.contains(&4));
        let e = m.apply(&env(5, broker(4, "a"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        // An undrain ends a decommission before it is over.
        m.apply(&env(6, Command::Decommission { broker: 3 })).unwrap();
        let undrain = Command::SetBrokerStatus {
            broker: 3,
            status: BrokerStatus::Active,
        };
        m.apply(&env(7, undrain)).unwrap();
        assert!(!m.brokers[&3].decommissioning && m.brokers[&3].status == BrokerStatus::Active);
    }

    #[test]
    fn a_transferred_leadership_is_pinned_against_balancing_until_its_broker_leaves() {
        let mut m = cluster();
        create(&mut m, "s", 3, 3).unwrap();
        let first = |m: &Metadata| m.namespace("t", "ns").unwrap().streams["s"].placement[0].clone();
        let p = first(&m);
        let to = p.replicas[1];
        let transfer = |broker| Command::TransferLeader {
            tenant: "t".into(),
            namespace: "ns".into(),
            name: "s".into(),
            shard: 0,
            broker,
        };
        m.apply(&env(1, transfer(to))).unwrap();
        assert_eq!(first(&m).replicas[0], to);
        assert!(first(&m).leader_pinned);
        // Three shards, three brokers: `to` now leads two; balancing keeps it.
        m.apply(&env(2, Command::Rebalance { goal: None })).unwrap();
        assert_eq!(first(&m).replicas[0], to, "pinned");
        // Not a replica, or no such shard: refused.
        m.apply(&env(3, broker(4, "a"))).unwrap();
        assert_eq!(
            m.apply(&env(4, transfer(4))).unwrap_err().kind,
            ErrorKind::Invalid
        );
        let beyond = Command::TransferLeader {
            tenant: "t".into(),
            namespace: "ns".into(),
            name: "s".into(),
            shard: 3,
            broker: to,
        };
        assert_eq!(m.apply(&env(5, beyond)).unwrap_err().kind, ErrorKind::Invalid);
        // Its broker drains: the leadership moves on, pin or not.
        let drain = Command::SetBrokerStatus {
            broker: to,
            status: BrokerStatus::Draining,
        };
        m.apply(&env(6, drain)).unwrap();
        assert_ne!(first(&m).replicas[0], to);
    }

    #[test]
    fn draining_moves_leaderships_at_once() {
        let mut m = cluster();
        create(&mut m, "s", 6, 2).unwrap();
        m.apply(&env(
            0,
            Command::SetBrokerStatus {
                broker: 1,
                status: BrokerStatus::Draining,
            },
        ))
        .unwrap();
        assert!(m.placements().all(|p| p.replicas[0] != 1));
        // New shards avoid it entirely.
        create(&mut m, "s2", 3, 2).unwrap();
        let s2 = &m.namespace("t", "ns").unwrap().streams["s2"];
        assert!(s2.placement.iter().all(|p| !p.replicas.contains(&1)));
    }

    #[test]
    fn rotation_keeps_the_old_key_for_the_overlap_then_drops_it() {
        let mut m = cluster();
        m.apply(&env(
            1_000,
            Command::RotateKey {
                tenant: "t".into(),
                key: new_signing_key("k2", [2; 32]),
                overlap_ms: 5_000,
            },
        ))
        .unwrap();
        let kids = |m: &Metadata| -> Vec<String> {
            m.tenant("t")
                .unwrap()
                .keys
                .iter()
                .map(|k| k.kid.clone())
                .collect()
        };
        assert_eq!(kids(&m), vec!["k1", "k2"]);
        assert_eq!(m.jwks("t").unwrap()["keys"].as_array().unwrap().len(), 2);
        m.apply(&env(
            5_999,
            Command::Reconcile {
                grace_ms: 0,
                moves_per_broker_max: 0,
            },
        ))
        .unwrap();
        assert_eq!(kids(&m), vec!["k1", "k2"]);
        m.apply(&env(
            6_000,
            Command::Reconcile {
                grace_ms: 0,
                moves_per_broker_max: 0,
            },
        ))
        .unwrap();
        assert_eq!(kids(&m), vec!["k2"]);
        let dup = m.apply(&env(
            7_000,
            Command::RotateKey {
                tenant: "t".into(),
                key: new_signing_key("k2", [3; 32]),
                overlap_ms: 0,
            },
        ));
        assert_eq!(dup.unwrap_err().kind, ErrorKind::Conflict);
    }

    #[test]
    fn bootstrap_runs_once_and_rbac_stays_inside_the_tenant() {
        let mut m = Metadata::new();
        let boot = |admins: Vec<String>| Command::Bootstrap {
            tenant: "acme".into(),
            spec: TenantSpec::default(),
            issuers: vec![],
            admins,
            key: new_signing_key("k1", [1; 32]),
        };
        assert_eq!(
            m.apply(&env(0, boot(vec![]))).unwrap_err().kind,
            ErrorKind::Invalid
        );
        m.apply(&env(0, boot(vec!["p:alice".into()]))).unwrap();
        assert_eq!(
            m.apply(&env(0, boot(vec!["p:bob".into()]))).unwrap_err().kind,
            ErrorKind::Conflict
        );
        let alice = m.tenant("acme").unwrap().rules.grants("p:alice", &[]);
        assert!(Grant::allows(
            &alice,
            Action::TenantManage,
            &Object::Tenant("acme".into())
        ));
        let foreign = Command::AddPolicy {
            tenant: "acme".into(),
            caller: alice.clone(),
            policy: Policy {
                subject: "p:bob".into(),
                object: "stream:other/ns/s".parse().unwrap(),
                action: Action::StreamPublish,
            },
        };
        assert_eq!(m.apply(&env(0, foreign)).unwrap_err().kind, ErrorKind::Forbidden);
        // A namespace admin cannot grant at tenant level.
        let ns_admin = vec![Grant {
            action: Action::RbacPolicyManage,
            object: "namespace:acme/ns".parse().unwrap(),
        }];
        let wide = Command::AddPolicy {
            tenant: "acme".into(),
            caller: ns_admin,
            policy: Policy {
                subject: "p:bob".into(),
                object: "tenant:acme".parse().unwrap(),
                action: Action::StreamPublish,
            },
        };
        assert_eq!(m.apply(&env(0, wide)).unwrap_err().kind, ErrorKind::Forbidden);
    }

    /// 32 bytes of `b`, as a data key's material.
    fn material(b: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([b; 32])
    }

    fn encrypted(key_id: &str, rotation_period_ms: u64) -> TenantSpec {
        TenantSpec {
            encryption: Some(EncryptionSpec {
                key_id: key_id.into(),
                rotation_period_ms,
            }),
            ..TenantSpec::default()
        }
    }

    /// A `PutTenant` of `spec` carrying `data_key`, as the API proposes it
    /// (a new tenant also gets a signing key).
    fn put_encrypted(tenant: &str, spec: TenantSpec, data_key: Option<String>) -> Command {
        Command::PutTenant {
            tenant: tenant.into(),
            spec,
            key: Some(new_signing_key(&format!("k-{tenant}"), [7; 32])),
            keep_quotas: false,
            data_key,
        }
    }

    /// (id, master key id, created) of each of `tenant`'s data keys.
    fn data_keys(m: &Metadata, tenant: &str) -> Vec<(u32, String, u64)> {
        m.tenant(tenant)
            .unwrap()
            .data_keys
            .iter()
            .map(|k| (k.id, k.master_key_id.clone(), k.created_ms))
            .collect()
    }

    fn rotate_data_key(tenant: &str, material: String, due_only: bool) -> Command {
        Command::RotateDataKey {
            tenant: tenant.into(),
            material,
            due_only,
        }
    }

    #[test]
    fn a_tenant_created_with_encryption_gets_a_cluster_unique_data_key_and_the_feed_says_so() {
        let mut m = cluster();
        let v0 = m.version;
        m.apply(&env(
            5,
            put_encrypted("e", encrypted("mk1", 0), Some(material(1))),
        ))
        .unwrap();
        assert_eq!(data_keys(&m, "e"), vec![(1, "mk1".into(), 5)]);
        assert_eq!(m.tenant("e").unwrap().data_key().unwrap().material, material(1));
        let feed = m.changes_since(v0).unwrap();
        let kinds: Vec<&str> = feed
            .iter()
            .map(|v| match &v.change {
                Change::Tenant { .. } => "tenant",
                Change::Keys { .. } => "keys",
                Change::DataKeys { .. } => "data_keys",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["tenant", "keys", "data_keys"]);
        let Change::DataKeys {
            tenant,
            encryption,
            keys,
        } = &feed[2].change
        else {
            unreachable!()
        };
        assert_eq!(tenant, "e");
        assert_eq!(encryption.as_ref().unwrap().key_id, "mk1");
        assert_eq!(keys, &m.tenant("e").unwrap().data_keys);
        // As brokers read it.
        let json = serde_json::to_value(&feed[2]).unwrap();
        let want = serde_json::json!({
            "version": m.version,
            "change": {
                "type": "data_keys",
                "tenant": "e",
                "encryption": {"key_id": "mk1", "rotation_period_ms": 0},
                "keys": [{"id": 1, "master_key_id": "mk1", "material": material(1), "created_ms": 5}],
            },
        });
        assert_eq!(json, want);
        // The `Debug` of a key never prints its material.
        assert!(!format!("{:?}", feed[2]).contains(&material(1)));
        // Ids are the cluster's, not the tenant's.
        m.apply(&env(
            6,
            put_encrypted("f", encrypted("mk1", 0), Some(material(2))),
        ))
        .unwrap();
        assert_eq!(data_keys(&m, "f"), vec![(2, "mk1".into(), 6)]);
        assert_eq!(m.next_data_key_id, 3);
        // Without encryption, no key (the material is ignored), no change.
        m.apply(&env(
            7,
            put_encrypted("g", TenantSpec::default(), Some(material(3))),
        ))
        .unwrap();
        assert!(data_keys(&m, "g").is_empty());
        assert!(!m
            .changes
            .iter()
            .any(|v| matches!(&v.change, Change::DataKeys { tenant, .. } if tenant == "g")));
        // With encryption and no material: refused, nothing made.
        let e = m
            .apply(&env(8, put_encrypted("h", encrypted("mk1", 0), None)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        assert!(!m.tenants.contains_key("h"));
        let e = m
            .apply(&env(
                8,
                put_encrypted("h", encrypted("mk1", 0), Some("short".into())),
            ))
            .unwrap_err();
        assert!(e.message.contains("not base64url"), "{e}");
        let e = m
            .apply(&env(
                8,
                put_encrypted("h", encrypted("mk1", 0), Some(material(1)[..22].into())),
            ))
            .unwrap_err();
        assert!(e.message.contains("32 bytes, not 16"), "{e}");
        assert_eq!(m.next_data_key_id, 3, "a refusal uses no id");
    }

    #[test]
    fn an_update_adds_a_data_key_only_when_the_master_key_changes_and_turning_off_keeps_them() {
        let mut m = cluster();
        m.apply(&env(
            1,
            put_encrypted("e", encrypted("mk1", 0), Some(material(1))),
        ))
        .unwrap();
        // The same master key: the material is ignored.
        let v = m.version;
        let a = m
            .apply(&env(
                2,
                put_encrypted("e", encrypted("mk1", 0), Some(material(2))),
            ))
            .unwrap();
        assert!(!a.changed && m.version == v);
        assert_eq!(data_keys(&m, "e"), vec![(1, "mk1".into(), 1)]);
        // Another display name: a tenant change, not a data key one.
        let renamed = TenantSpec {
            display_name: "E".into(),
            ..encrypted("mk1", 0)
        };
        m.apply(&env(3, put_encrypted("e", renamed, Some(material(3)))))
            .unwrap();
        assert_eq!(data_keys(&m, "e").len(), 1);
        assert!(matches!(&m.changes.back().unwrap().change, Change::Tenant { .. }));
        // Another master key: a new key under it.
        let v = m.version;
        m.apply(&env(
            4,
            put_encrypted("e", encrypted("mk2", 0), Some(material(4))),
        ))
        .unwrap();
        assert_eq!(
            data_keys(&m, "e"),
            vec![(1, "mk1".into(), 1), (2, "mk2".into(), 4)]
        );
        let feed = m.changes_since(v).unwrap();
        assert!(matches!(
            &feed[..],
            [
                Versioned { change: Change::Tenant { .. }, .. },
                Versioned { change: Change::DataKeys { keys, encryption: Some(_), .. }, .. },
            ] if keys.len() == 2
        ));
        // Off: the keys stay (sealed records need them); the feed says off.
        m.apply(&env(5, put_encrypted("e", TenantSpec::default(), None)))
            .unwrap();
        assert_eq!(data_keys(&m, "e").len(), 2);
        assert!(matches!(
            &m.changes.back().unwrap().change,
            Change::DataKeys { encryption: None, keys, .. } if keys.len() == 2
        ));
        // On again under the current key's master: nothing new to make.
        m.apply(&env(
            6,
            put_encrypted("e", encrypted("mk2", 0), Some(material(6))),
        ))
        .unwrap();
        assert_eq!(data_keys(&m, "e").len(), 2);
        // Back to the first master key: a new key, the current one.
        m.apply(&env(
            7,
            put_encrypted("e", encrypted("mk1", 0), Some(material(7))),
        ))
        .unwrap();
        assert_eq!(data_keys(&m, "e")[2], (3, "mk1".into(), 7));
        // A bootstrap carries no data key: it cannot turn encryption on.
        let boot = Command::Bootstrap {
            tenant: "b".into(),
            spec: encrypted("mk1", 0),
            issuers: vec![],
            admins: vec!["p:alice".into()],
            key: new_signing_key("kb", [9; 32]),
        };
        let e = m.apply(&env(8, boot)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    }

    #[test]
    fn a_scheduled_rotation_adds_a_data_key_only_once_due_and_an_asked_one_at_once() {
        let mut m = cluster();
        let day = ROTATION_PERIOD_MS_MIN;
        m.apply(&env(
            1_000,
            put_encrypted("e", encrypted("mk1", day), Some(material(1))),
        ))
        .unwrap();
        assert!(!m.tenant("e").unwrap().data_key_due(1_000 + day - 1));
        // Before it is due: nothing, not even a version.
        let v = m.version;
        let a = m
            .apply(&env(1_000 + day - 1, rotate_data_key("e", material(2), true)))
            .unwrap();
        assert!(!a.changed && m.version == v);
        assert_eq!(data_keys(&m, "e").len(), 1);
        // Due: a new key, the current one.
        assert!(m.tenant("e").unwrap().data_key_due(1_000 + day));
        let a = m
            .apply(&env(1_000 + day, rotate_data_key("e", material(2), true)))
            .unwrap();
        assert!(a.changed);
        assert_eq!(data_keys(&m, "e")[1], (2, "mk1".into(), 1_000 + day));
        assert!(matches!(
            &m.changes.back().unwrap().change,
            Change::DataKeys { keys, .. } if keys.len() == 2
        ));
        // A second proposal of the same tick (or a racing one): no-op.
        let a = m
            .apply(&env(1_000 + day + 1, rotate_data_key("e", material(3), true)))
            .unwrap();
        assert!(!a.changed);
        assert_eq!(data_keys(&m, "e").len(), 2);
        // Asked for: at once, due or not.
        m.apply(&env(1_000 + day + 2, rotate_data_key("e", material(4), false)))
            .unwrap();
        assert_eq!(data_keys(&m, "e").len(), 3);
        assert_eq!(m.audit.back().unwrap().outcome, "ok");
        // Without a period, a scheduled one never is.
        m.apply(&env(
            2_000,
            put_encrypted("f", encrypted("mk1", 0), Some(material(5))),
        ))
        .unwrap();
        assert!(!m.tenant("f").unwrap().data_key_due(u64::MAX));
        let a = m
            .apply(&env(u64::MAX, rotate_data_key("f", material(6), true)))
            .unwrap();
        assert!(!a.changed);
        // A bad material is refused.
        let e = m
            .apply(&env(3_000, rotate_data_key("f", "not base64!".into(), false)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    }

    #[test]
    fn a_rotation_is_refused_without_encryption_or_past_the_cap_and_never_drops_a_key() {
        let mut m = cluster();
        for due_only in [false, true] {
            let e = m
                .apply(&env(1, rotate_data_key("t", material(1), due_only)))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
            assert!(e.message.contains("no encryption"), "{e}");
        }
        let e = m
            .apply(&env(1, rotate_data_key("nobody", material(1), false)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(m.tenant("t").unwrap().data_keys.is_empty());
        // Up to the cap, then refused, every key kept.
        m.apply(&env(
            1,
            put_encrypted("e", encrypted("mk1", 0), Some(material(1))),
        ))
        .unwrap();
        for i in 1..DATA_KEYS_MAX {
            m.apply(&env(2 + i as u64, rotate_data_key("e", material(2), false)))
                .unwrap();
        }
        assert_eq!(data_keys(&m, "e").len(), DATA_KEYS_MAX);
        let e = m
            .apply(&env(9_999, rotate_data_key("e", material(3), false)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert!(e.message.contains("DATA_KEYS_MAX"), "{e}");
        // So is a change of master key, which would need a new one.
        let e = m
            .apply(&env(
                9_999,
                put_encrypted("e", encrypted("mk2", 0), Some(material(3))),
            ))
            .unwrap_err();
        assert!(e.message.contains("DATA_KEYS_MAX"), "{e}");
        assert_eq!(data_keys(&m, "e").len(), DATA_KEYS_MAX);
        assert_eq!(data_keys(&m, "e")[0].0, 1, "the oldest is still there");
        assert_eq!(
            m.tenant("e").unwrap().spec.encryption.as_ref().unwrap().key_id,
            "mk1"
        );
    }

    #[test]
    fn deleting_a_tenant_leaves_none_of_its_data_key_material_in_the_state() {
        let mut m = cluster();
        let secret = material(0xAB);
        let rotated = material(0xCD);
        m.apply(&env(
            1,
            put_encrypted("e", encrypted("mk1", 0), Some(secret.clone())),
        ))
        .unwrap();
        m.apply(&env(2, rotate_data_key("e", rotated.clone(), false)))
            .unwrap();
        // Another tenant's keys are not touched.
        m.apply(&env(
            3,
            put_encrypted("f", encrypted("mk1", 0), Some(material(1))),
        ))
        .unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(&secret) && json.contains(&rotated));
        m.apply(&env(4, Command::DeleteTenant { tenant: "e".into() }))
            .unwrap();
        assert!(!m.tenants.contains_key("e"));
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains(&secret), "the first key's material is gone");
        assert!(!json.contains(&rotated), "the rotated key's material is gone");
        assert!(json.contains(&material(1)), "f keeps its key");
        // The feed still orders what happened: its changes are emptied of
        // keys, and the deletion follows them.
        let feed = m.changes_since(0).unwrap();
        assert!(feed.iter().any(
            |v| matches!(&v.change, Change::DataKeys { tenant, keys, .. } if tenant == "e" && keys.is_empty())
        ));
        assert!(matches!(
            &feed.last().unwrap().change,
            Change::Tenant { tenant, quotas: None } if tenant == "e"
        ));
        // A new tenant of the same name starts afresh, with a new id.
        m.apply(&env(
            5,
            put_encrypted("e", encrypted("mk1", 0), Some(material(2))),
        ))
        .unwrap();
        assert_eq!(data_keys(&m, "e"), vec![(4, "mk1".into(), 5)]);
    }

    #[test]
    fn a_state_from_before_encryption_still_loads_and_counts_data_keys_from_1() {
        let mut m = cluster();
        m.apply(&env(
            1,
            put_encrypted("e", encrypted("mk1", 0), Some(material(1))),
        ))
        .unwrap();
        let mut old = serde_json::to_value(&m).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("next_data_key_id").unwrap();
        // The changes of a feed from before had no data keys either.
        o.insert("changes".into(), serde_json::json!([]));
        for t in o["tenants"].as_object_mut().unwrap().values_mut() {
            let t = t.as_object_mut().unwrap();
            t.remove("data_keys").unwrap();
            t["spec"].as_object_mut().unwrap().remove("encryption");
        }
        let text = serde_json::to_string(&old).unwrap();
        for field in ["next_data_key_id", "data_keys", "encryption"] {
            assert!(!text.contains(field), "{field}");
        }
        let mut back: Metadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back.next_data_key_id, 0);
        assert!(back
            .tenants
            .values()
            .all(|t| t.data_keys.is_empty() && t.spec.encryption.is_none()));
        back.apply(&env(
            2,
            put_encrypted("t", encrypted("mk1", 0), Some(material(2))),
        ))
        .unwrap();
        assert_eq!(data_keys(&back, "t"), vec![(1, "mk1".into(), 2)]);
        assert_eq!(back.next_data_key_id, 2);
        // And an old command, without a data key.
        let cmd: Command = serde_json::from_value(serde_json::json!({
            "op": "put_tenant", "tenant": "x", "spec": {}, "key": null,
        }))
        .unwrap();
        assert!(matches!(cmd, Command::PutTenant { data_key: None, .. }));
    }

    #[test]
    fn an_encryption_spec_needs_a_plain_key_id_and_a_rotation_period_in_range() {
        let spec = |key_id: &str, rotation_period_ms: u64| EncryptionSpec {
            key_id: key_id.into(),
            rotation_period_ms,
        };
        for ok in [
            spec("mk1", 0),
            spec("prod.master-key_2", ROTATION_PERIOD_MS_MIN),
            spec(&"k".repeat(KEY_ID_BYTES_MAX), ROTATION_PERIOD_MS_MAX),
        ] {
            ok.validate().unwrap();
        }
        for (bad, says) in [
            (spec("", 0), "key_id must be 1 to 64 bytes"),
            (
                spec(&"k".repeat(KEY_ID_BYTES_MAX + 1), 0),
                "key_id must be 1 to 64 bytes",
            ),
            (spec("a/b", 0), "only A-Z"),
            (spec("key id", 0), "only A-Z"),
            (spec("ké", 0), "only A-Z"),
            (
                spec("mk1", ROTATION_PERIOD_MS_MIN - 1),
                "rotation_period_ms must be 0",
            ),
            (spec("mk1", 1), "rotation_period_ms must be 0"),
            (
                spec("mk1", ROTATION_PERIOD_MS_MAX + 1),
                "rotation_period_ms must be 0",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        // Through the tenant's spec, and so through apply.
        let e = encrypted("a b", 0).validate().unwrap_err();
        assert!(e.starts_with("encryption: key_id"), "{e}");
        let mut m = cluster();
        let e = m
            .apply(&env(
                1,
                put_encrypted("e", encrypted("mk1", 1_000), Some(material(1))),
            ))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        // Unknown fields are refused as the body is read.
        let r = serde_json::from_str::<TenantSpec>(r#"{"encryption": {"key_id": "k", "period": 1}}"#);
        assert!(r.is_err());
        let s: TenantSpec = serde_json::from_str(r#"{"encryption": {"key_id": "k"}}"#).unwrap();
        assert_eq!(s.encryption.unwrap().rotation_period_ms, 0);
    }

    #[test]
    fn the_feed_reports_when_it_no_longer_reaches_back() {
        let mut m = cluster();
        for i in 0..(CHANGES_KEPT_MAX as u64 + 10) {
            m.apply(&env(
                0,
                Command::PutTenant {
                    tenant: "t".into(),
                    spec: TenantSpec {
                        display_name: format!("v{i}"),
                        ..TenantSpec::default()
                    },
                    key: None,
                    keep_quotas: false,
                    data_key: None,
                },
            ))
            .unwrap();
        }
        assert_eq!(m.changes_since(0), None);
        let recent = m.changes_since(m.version - 3).unwrap();
        assert_eq!(
            recent.iter().map(|c| c.version).collect::<Vec<_>>(),
            vec![m.version - 2, m.version - 1, m.version]
        );
    }
}
