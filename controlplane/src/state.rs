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

/// Changes the feed keeps; a broker further behind takes a new snapshot.
pub const CHANGES_KEPT_MAX: usize = 4096;
/// Audit entries kept in the replicated state (oldest dropped first).
pub const AUDIT_KEPT_MAX: usize = 10_000;
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
    },
    DeleteTenant {
        tenant: String,
    },
    PutNamespace {
        tenant: String,
        namespace: String,
        spec: NamespaceSpec,
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
    RegisterBroker {
        registration: BrokerRegistration,
    },
    SetBrokerStatus {
        broker: u32,
        status: BrokerStatus,
    },
    /// A broker has finished a move: `leaving` replicas of `group` are out.
    MoveDone {
        group: u64,
        broker: u32,
    },
    /// Re-place replicas of brokers down for `grace_ms` or draining, move
    /// leaderships off draining brokers, drop retired keys.
    Reconcile {
        grace_ms: u64,
    },
    /// Even out preferred leaders across active brokers.
    Rebalance,
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
            | PutIdpIssuer { tenant, .. }
            | DeleteIdpIssuer { tenant, .. }
            | RotateKey { tenant, .. }
            | AddPolicy { tenant, .. }
            | RemovePolicy { tenant, .. }
            | AddGrouping { tenant, .. }
            | RemoveGrouping { tenant, .. }
            | Bootstrap { tenant, .. } => Some(tenant),
            RegisterBroker { .. }
            | SetBrokerStatus { .. }
            | MoveDone { .. }
            | Reconcile { .. }
            | Rebalance => None,
        }
    }

    /// A short description for the audit log (no key material).
    fn summary(&self) -> String {
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
    /// The next shard group id (0 is the brokers' own metadata group).
    pub next_group: u64,
    pub changes: VecDeque<Versioned>,
    pub audit: VecDeque<AuditEntry>,
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
    fn placed(spec: Self::Spec, placement: Vec<ShardPlacement>) -> Self;
    fn spec(&self) -> &Self::Spec;
    fn of(n: &Namespace) -> &BTreeMap<String, Self>;
    fn of_mut(n: &mut Namespace) -> &mut BTreeMap<String, Self>;
    /// Whether the other kind holds `name` in `n`.
    fn other_holds(n: &Namespace, name: &str) -> bool;
    fn change(tenant: &str, namespace: &str, name: &str, value: Option<Self>) -> Change;
    /// The command that creates it, as the API proposes it.
    fn create(tenant: String, namespace: String, name: String, spec: Self::Spec) -> Command;
    /// Its RBAC object.
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
            fn placed(spec: $spec, placement: Vec<ShardPlacement>) -> $ty {
                $ty { spec, placement }
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
            ..Metadata::default()
        }
    }

    /// Applies one committed envelope. A refusal changes nothing but the
    /// audit log.
    pub fn apply(&mut self, env: &Envelope) -> Result<Applied, ApplyError> {
        let before = self.version;
        let mut moves = Vec::new();
        let mut scratch = self.clone_without_logs();
        let result = scratch.run(env, &mut moves);
        let audited = !matches!(
            env.command,
            Command::Reconcile { .. } | Command::SetBrokerStatus { .. } | Command::MoveDone { .. }
        );
        match result {
            Ok(changes) => {
                let changed = !changes.is_empty();
                self.tenants = scratch.tenants;
                self.brokers = scratch.brokers;
                self.next_group = scratch.next_group;
                if changed {
                    self.version += 1;
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
                    self.audit(env, "ok".into());
                }
                Ok(Applied {
                    version: self.version,
                    changed: self.version != before,
                    moves,
                })
            }
            Err(e) => {
                if audited {
                    self.audit(env, e.message.clone());
                }
                Err(e)
            }
        }
    }

    fn audit(&mut self, env: &Envelope, outcome: String) {
        self.audit.push_back(AuditEntry {
            version: self.version,
            at_ms: env.now_ms,
            actor: env.actor.clone(),
            operation: env.command.summary(),
            outcome,
        });
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

    fn placements(&self) -> impl Iterator<Item = &ShardPlacement> {
        self.tenants.values().flat_map(|t| {
            t.namespaces.values().flat_map(|n| {
                n.streams
                    .values()
                    .flat_map(|s| s.placement.iter())
                    .chain(n.caches.values().flat_map(|c| c.placement.iter()))
            })
        })
    }

    /// The brokers as placement sees them, with today's load.
    pub fn cluster(&self) -> Cluster {
        let mut load: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for p in self.placements() {
            for (i, r) in p.replicas.iter().chain(p.leaving.iter()).enumerate() {
                let e = load.entry(*r).or_default();
                e.0 += 1;
                e.1 += u32::from(i == 0);
            }
        }
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

    /// Creates a stream or cache `name` placed on brokers; creating it
    /// again with the same spec changes nothing, with another is refused,
    /// and a name is a stream or a cache, never both.
    fn create_placed<P: Placed>(
        &mut self,
        tenant: &str,
        namespace: &str,
        name: &str,
        spec: &P::Spec,
        moves: &mut Vec<Move>,
    ) -> Result<Vec<Change>, ApplyError> {
        check_names(&[(P::KIND, name)])?;
        P::validate(spec).map_err(ApplyError::invalid)?;
        let n = self.namespace(tenant, namespace)?;
        if P::other_holds(n, name) {
            return Err(ApplyError::conflict(format!(
                "{tenant}/{namespace}/{name} is a {}",
                P::OTHER
            )));
        }
        if let Some(x) = P::of(n).get(name) {
            if x.spec() == spec {
                return Ok(vec![]);
            }
            return Err(ApplyError::conflict(format!(
                "{} {tenant}/{namespace}/{name} exists with another spec{}",
                P::KIND,
                P::EXISTS_HINT
            )));
        }
        let (shards, rf) = P::shape(spec);
        let placement = self.place(shards, rf, moves)?;
        let value = P::placed(spec.clone(), placement);
        P::of_mut(self.namespace_mut(tenant, namespace)?).insert(name.to_owned(), value.clone());
        Ok(vec![P::change(tenant, namespace, name, Some(value))])
    }

    fn delete_placed<P: Placed>(
        &mut self,
        tenant: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, ApplyError> {
        let n = self.namespace_mut(tenant, namespace)?;
        P::of_mut(n)
            .remove(name)
            .ok_or_else(|| ApplyError::not_found(format!("no {} {tenant}/{namespace}/{name}", P::KIND)))?;
        Ok(vec![P::change(tenant, namespace, name, None)])
    }

    fn place(
        &mut self,
        shards: u32,
        rf: u32,
        moves: &mut Vec<Move>,
    ) -> Result<Vec<ShardPlacement>, ApplyError> {
        let mut cluster = self.cluster();
        let mut out = Vec::with_capacity(shards as usize);
        for _ in 0..shards {
            let replicas = cluster
                .place(rf)
                .map_err(|e| ApplyError::conflict(e.to_string()))?;
            let group = self.next_group;
            self.next_group += 1;
            moves.extend(replicas.iter().map(|to| Move {
                group,
                from: None,
                to: *to,
            }));
            out.push(ShardPlacement {
                group,
                replicas,
                leaving: Vec::new(),
            });
        }
        Ok(out)
    }

    fn run(&mut self, env: &Envelope, moves: &mut Vec<Move>) -> Result<Vec<Change>, ApplyError> {
        use Command::*;
        let now = env.now_ms;
        match &env.command {
            PutTenant { tenant, spec, key } => {
                check_names(&[("tenant", tenant)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                if let Some(t) = self.tenants.get_mut(tenant) {
                    if t.spec == *spec {
                        return Ok(vec![]);
                    }
                    t.spec = spec.clone();
                    return Ok(vec![Change::Tenant {
                        tenant: tenant.clone(),
                        quotas: Some(spec.quotas),
                    }]);
                }
                let key = key
                    .as_ref()
                    .ok_or_else(|| ApplyError::invalid("a new tenant needs its first signing key"))?;
                let mut t = Tenant {
                    spec: spec.clone(),
                    rules: Rules::new(tenant),
                    ..Tenant::default()
                };
                rotate(&mut t, key, now, 0)?;
                self.tenants.insert(tenant.clone(), t);
                Ok(vec![
                    Change::Tenant {
                        tenant: tenant.clone(),
                        quotas: Some(spec.quotas),
                    },
                    Change::Keys {
                        tenant: tenant.clone(),
                    },
                ])
            }
            DeleteTenant { tenant } => {
                let t = self.tenant(tenant)?;
                if let Some(n) = t.namespaces.keys().next() {
                    return Err(ApplyError::conflict(format!(
                        "tenant {tenant:?} still has namespaces ({n:?} …); delete them first"
                    )));
                }
                self.tenants.remove(tenant);
                Ok(vec![Change::Tenant {
                    tenant: tenant.clone(),
                    quotas: None,
                }])
            }
            PutNamespace {
                tenant,
                namespace,
                spec,
            } => {
                check_names(&[("namespace", namespace)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                let t = self.tenant_mut(tenant)?;
                match t.namespaces.get_mut(namespace) {
                    Some(n) if n.spec == *spec => return Ok(vec![]),
                    Some(n) => n.spec = spec.clone(),
                    None => {
                        t.namespaces.insert(
                            namespace.clone(),
                            Namespace {
                                spec: spec.clone(),
                                ..Namespace::default()
                            },
                        );
                    }
                }
                Ok(vec![Change::Namespace {
                    tenant: tenant.clone(),
                    namespace: namespace.clone(),
                    quotas: Some(spec.quotas),
                }])
            }
            DeleteNamespace { tenant, namespace } => {
                let n = self.namespace(tenant, namespace)?;
                if let Some(s) = n.streams.keys().chain(n.caches.keys()).next() {
                    return Err(ApplyError::conflict(format!(
                        "namespace {tenant}/{namespace} still has streams or caches ({s:?} …); delete them first"
                    )));
                }
                self.tenant_mut(tenant)?.namespaces.remove(namespace);
                Ok(vec![Change::Namespace {
                    tenant: tenant.clone(),
                    namespace: namespace.clone(),
                    quotas: None,
                }])
            }
            CreateStream {
                tenant,
                namespace,
                stream,
                spec,
            } => self.create_placed::<Stream>(tenant, namespace, stream, spec, moves),
            UpdateStream {
                tenant,
                namespace,
                stream,
                update,
            } => {
                let n = self.namespace_mut(tenant, namespace)?;
                let s = n.streams.get_mut(stream).ok_or_else(|| {
                    ApplyError::not_found(format!("no stream {tenant}/{namespace}/{stream}"))
                })?;
                let spec = update.apply_to(&s.spec).map_err(ApplyError::invalid)?;
                if spec == s.spec {
                    return Ok(vec![]);
                }
                s.spec = spec;
                Ok(vec![Change::Stream {
                    tenant: tenant.clone(),
                    namespace: namespace.clone(),
                    stream: stream.clone(),
                    value: Some(s.clone()),
                }])
            }
            DeleteStream {
                tenant,
                namespace,
                stream,
            } => self.delete_placed::<Stream>(tenant, namespace, stream),
            CreateCache {
                tenant,
                namespace,
                cache,
                spec,
            } => self.create_placed::<Cache>(tenant, namespace, cache, spec, moves),
            DeleteCache {
                tenant,
                namespace,
                cache,
            } => self.delete_placed::<Cache>(tenant, namespace, cache),
            RegisterBroker { registration } => {
                registration.validate().map_err(ApplyError::invalid)?;
                let id = registration.id;
                let value = match self.brokers.get(&id) {
                    Some(b) if b.registration == *registration && b.status == BrokerStatus::Active => {
                        return Ok(vec![]);
                    }
                    // A registration brings a down broker back; a draining
                    // one stays draining until told otherwise.
                    Some(b) => Broker {
                        registration: registration.clone(),
                        status: match b.status {
                            BrokerStatus::Draining => BrokerStatus::Draining,
                            _ => BrokerStatus::Active,
                        },
                        since_ms: if b.status == BrokerStatus::Down {
                            now
                        } else {
                            b.since_ms
                        },
                    },
                    None => Broker {
                        registration: registration.clone(),
                        status: BrokerStatus::Active,
                        since_ms: now,
                    },
                };
                if self.brokers.get(&id) == Some(&value) {
                    return Ok(vec![]);
                }
                self.brokers.insert(id, value.clone());
                Ok(vec![Change::Broker {
                    broker: id,
                    value: Some(value),
                }])
            }
            SetBrokerStatus { broker, status } => {
                let b = self
                    .brokers
                    .get_mut(broker)
                    .ok_or_else(|| ApplyError::not_found(format!("no broker {broker}")))?;
                if b.status == *status {
                    return Ok(vec![]);
                }
                b.status = *status;
                b.since_ms = now;
                let value = b.clone();
                let mut changes = vec![Change::Broker {
                    broker: *broker,
                    value: Some(value),
                }];
                if *status == BrokerStatus::Draining {
                    // Leaderships move at once; replicas move in Reconcile.
                    changes.extend(self.balance_leaders());
                }
                Ok(changes)
            }
            MoveDone { group, broker } => Ok(self.for_each_placement(|p| {
                let before = p.leaving.len();
                if p.group == *group {
                    p.leaving.retain(|b| b != broker);
                }
                p.leaving.len() != before
            })),
            Reconcile { grace_ms } => {
                let mut changes = self.replace_replicas(now, *grace_ms, moves);
                for t in self.tenants.values_mut() {
                    let before = t.keys.len();
                    t.keys.retain(|k| k.retire_at_ms.is_none_or(|r| r > now));
                    if t.keys.len() != before {
                        changes.push(Change::Keys {
                            tenant: t.rules.tenant.clone(),
                        });
                    }
                }
                changes.extend(self.balance_leaders());
                Ok(changes)
            }
            Rebalance => Ok(self.balance_leaders()),
            PutIdpIssuer { tenant, issuer } => {
                issuer.validate().map_err(ApplyError::invalid)?;
                let t = self.tenant_mut(tenant)?;
                if t.idp_issuers.get(&issuer.issuer) == Some(issuer) {
                    return Ok(vec![]);
                }
                t.idp_issuers.insert(issuer.issuer.clone(), issuer.clone());
                // Issuers are not in the brokers' view; the version still
                // moves so the change is ordered and audited.
                Ok(vec![Change::Tenant {
                    tenant: tenant.clone(),
                    quotas: Some(t.spec.quotas),
                }])
            }
            DeleteIdpIssuer { tenant, issuer } => {
                let t = self.tenant_mut(tenant)?;
                t.idp_issuers.remove(issuer).ok_or_else(|| {
                    ApplyError::not_found(format!("tenant {tenant:?} has no issuer {issuer:?}"))
                })?;
                Ok(vec![Change::Tenant {
                    tenant: tenant.clone(),
                    quotas: Some(t.spec.quotas),
                }])
            }
            RotateKey {
                tenant,
                key,
                overlap_ms,
            } => {
                let t = self.tenant_mut(tenant)?;
                rotate(t, key, now, *overlap_ms)?;
                Ok(vec![Change::Keys {
                    tenant: tenant.clone(),
                }])
            }
            AddPolicy {
                tenant,
                caller,
                policy,
            } => {
                let t = self.tenant_mut(tenant)?;
                check_in_tenant(tenant, &policy.object)?;
                let added = t.rules.add_policy(caller, policy.clone())?;
                Ok(rbac_change(tenant, added))
            }
            RemovePolicy {
                tenant,
                caller,
                policy,
            } => {
                let t = self.tenant_mut(tenant)?;
                let removed = t.rules.remove_policy(caller, policy)?;
                if !removed {
                    return Err(ApplyError::not_found("no such policy"));
                }
                Ok(rbac_change(tenant, true))
            }
            AddGrouping {
                tenant,
                caller,
                grouping,
            } => {
                let t = self.tenant_mut(tenant)?;
                let added = t.rules.add_grouping(caller, grouping.clone())?;
                Ok(rbac_change(tenant, added))
            }
            RemoveGrouping {
                tenant,
                caller,
                grouping,
            } => {
                let t = self.tenant_mut(tenant)?;
                let removed = t.rules.remove_grouping(caller, grouping)?;
                if !removed {
                    return Err(ApplyError::not_found("no such grouping"));
                }
                Ok(rbac_change(tenant, true))
            }
            Bootstrap {
                tenant,
                spec,
                issuers,
                admins,
                key,
            } => {
                check_names(&[("tenant", tenant)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                if self.tenants.contains_key(tenant) {
                    return Err(ApplyError::conflict(format!(
                        "tenant {tenant:?} exists; bootstrap runs once per tenant"
                    )));
                }
                if admins.is_empty() {
                    return Err(ApplyError::invalid(
                        "initial_admin_principals must name at least one principal",
                    ));
                }
                let mut t = Tenant {
                    spec: spec.clone(),
                    rules: Rules::new(tenant),
                    ..Tenant::default()
                };
                for i in issuers {
                    i.validate().map_err(ApplyError::invalid)?;
                    t.idp_issuers.insert(i.issuer.clone(), i.clone());
                }
                let all = tenant_admin_grants(tenant);
                for admin in admins {
                    for g in &all {
                        t.rules.add_policy(
                            &all,
                            Policy {
                                subject: admin.clone(),
                                object: g.object.clone(),
                                action: g.action,
                            },
                        )?;
                    }
                }
                rotate(&mut t, key, now, 0)?;
                self.tenants.insert(tenant.clone(), t);
                Ok(vec![
                    Change::Tenant {
                        tenant: tenant.clone(),
                        quotas: Some(spec.quotas),
                    },
                    Change::Keys {
                        tenant: tenant.clone(),
                    },
                ])
            }
        }
    }

    /// Every stream and cache whose placement `f` changed, as changes.
    fn for_each_placement(&mut self, mut f: impl FnMut(&mut ShardPlacement) -> bool) -> Vec<Change> {
        let mut out = Vec::new();
        for (tn, t) in self.tenants.iter_mut() {
            for (nn, n) in t.namespaces.iter_mut() {
                for (sn, s) in n.streams.iter_mut() {
                    let mut any = false;
                    for p in s.placement.iter_mut() {
                        any |= f(p);
                    }
                    if any {
                        out.push(Change::Stream {
                            tenant: tn.clone(),
                            namespace: nn.clone(),
                            stream: sn.clone(),
                            value: Some(s.clone()),
                        });
                    }
                }
                for (cn, c) in n.caches.iter_mut() {
                    let mut any = false;
                    for p in c.placement.iter_mut() {
                        any |= f(p);
                    }
                    if any {
                        out.push(Change::Cache {
                            tenant: tn.clone(),
                            namespace: nn.clone(),
                            cache: cn.clone(),
                            value: Some(c.clone()),
                        });
                    }
                }
            }
        }
        out
    }

    fn balance_leaders(&mut self) -> Vec<Change> {
        let mut cluster = self.cluster();
        self.for_each_placement(|p| cluster.balance_leader(&mut p.replicas))
    }

    /// Replicas on brokers down past the grace period, or draining, get a
    /// replacement; the old replica is listed as leaving until the shard's
    /// leader reports the move done.
    fn replace_replicas(&mut self, now: u64, grace_ms: u64, moves: &mut Vec<Move>) -> Vec<Change> {
        let evicted: Vec<u32> = self
            .brokers
            .values()
            .filter(|b| match b.status {
                BrokerStatus::Draining => true,
                BrokerStatus::Down => now.saturating_sub(b.since_ms) >= grace_ms,
                BrokerStatus::Active => false,
            })
            .map(|b| b.registration.id)
            .collect();
        if evicted.is_empty() {
            return Vec::new();
        }
        let mut cluster = self.cluster();
        self.for_each_placement(|p| {
            let mut any = false;
            for gone in evicted.iter().copied() {
                let Some(i) = p.replicas.iter().position(|r| *r == gone) else {
                    continue;
                };
                let Some(new) = cluster.replace(&p.replicas, gone) else {
                    continue;
                };
                p.replicas[i] = new;
                if !p.leaving.contains(&gone) {
                    p.leaving.push(gone);
                }
                moves.push(Move {
                    group: p.group,
                    from: Some(gone),
                    to: new,
                });
                any = true;
            }
            any
        })
    }

    /// Brokers down or draining that still hold replicas, and shards with
    /// fewer live replicas than their replication factor: what `cluster
    /// status` reports.
    pub fn under_replicated(&self) -> Vec<u64> {
        let live = |b: &u32| {
            self.brokers
                .get(b)
                .is_some_and(|x| x.status != BrokerStatus::Down)
        };
        self.placements()
            .filter(|p| p.replicas.iter().any(|r| !live(r)) || !p.leaving.is_empty())
            .map(|p| p.group)
            .collect()
    }

    /// The public keys a tenant's tokens verify with, as a JWKS document.
    pub fn jwks(&self, tenant: &str) -> Result<serde_json::Value, ApplyError> {
        let t = self.tenant(tenant)?;
        let keys: Vec<serde_json::Value> = t
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": k.kid, "x": k.public,
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }
}

fn rbac_change(tenant: &str, changed: bool) -> Vec<Change> {
    if !changed {
        return vec![];
    }
    // Rules are not in the brokers' view (tokens carry permissions); the
    // version moves so the change is ordered and audited.
    vec![Change::Keys {
        tenant: tenant.to_owned(),
    }]
}

fn check_in_tenant(tenant: &str, object: &Object) -> Result<(), ApplyError> {
    if object.tenant() != tenant {
        return Err(ApplyError {
            kind: ErrorKind::Forbidden,
            message: format!("{object} is not inside tenant {tenant:?}"),
        });
    }
    Ok(())
}

fn rotate(t: &mut Tenant, key: &SigningKey, now: u64, overlap_ms: u64) -> Result<(), ApplyError> {
    if key.kid.is_empty() || t.keys.iter().any(|k| k.kid == key.kid) {
        return Err(ApplyError::conflict(format!(
            "key id {:?} is empty or taken",
            key.kid
        )));
    }
    if t.keys.len() >= KEYS_PER_TENANT_MAX {
        return Err(ApplyError::conflict(format!(
            "the tenant has {KEYS_PER_TENANT_MAX} keys; wait for the oldest to retire"
        )));
    }
    if let Some(signer) = t.keys.last_mut() {
        signer.retire_at_ms.get_or_insert(now + overlap_ms);
    }
    t.keys.push(SigningKey {
        created_ms: now,
        retire_at_ms: None,
        ..key.clone()
    });
    Ok(())
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
            },
        ))
        .unwrap();
        m.apply(&env(
            0,
            Command::PutNamespace {
                tenant: "t".into(),
                namespace: "ns".into(),
                spec: NamespaceSpec::default(),
            },
        ))
        .unwrap();
        m
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
            .apply(&env(5_000, Command::Reconcile { grace_ms: 10_000 }))
            .unwrap();
        assert!(a.moves.is_empty());
        let a = m
            .apply(&env(11_000, Command::Reconcile { grace_ms: 10_000 }))
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
        m.apply(&env(5_999, Command::Reconcile { grace_ms: 0 })).unwrap();
        assert_eq!(kids(&m), vec!["k1", "k2"]);
        m.apply(&env(6_000, Command::Reconcile { grace_ms: 0 })).unwrap();
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
