//! The control plane's records: what the API accepts and the feed sends.
//! Every spec checks itself (`validate`), so a bad value is refused with a
//! message before it is proposed, and again when applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rbac::{Grant, Rules};

/// Shards one stream or cache may have.
pub const SHARDS_MAX: u32 = 1024;
// Under `slots` routing each shard holds a range of Redis's hash slots, so
// there may be no more shards than slots.
const _: () = assert!(SHARDS_MAX <= felix_model::routing::SLOTS as u32);
/// Brokers one registry holds. Brokers learn each other from it (there is
/// no static peer list), each keeps one replication connection per peer it
/// shares a group with, and placement scans the registry per shard placed:
/// a thousand keeps those linear costs small while leaving room far past
/// the hundred brokers the reference design plans for.
pub const BROKERS_MAX: usize = 1024;
pub use felix_model::limits::{REPLICATION_FACTOR_DEFAULT, REPLICATION_FACTOR_MAX};
/// Longest display name or description.
pub const TEXT_BYTES_MAX: usize = 1024;

/// A tenant's or namespace's limits; `None` is unlimited. Only an
/// operator sets them (a tenant admin must not raise its own). The rates
/// hold per broker, as Kafka's client quotas; the counts are checked by
/// the control plane when a stream or cache is created; the usage limits
/// are checked by brokers against the cluster's total, which brokers
/// report in their heartbeats (see `docs/security.md`, quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default)]
    pub publish_records_per_s_max: Option<u64>,
    #[serde(default)]
    pub publish_bytes_per_s_max: Option<u64>,
    /// Streams and caches, together.
    #[serde(default)]
    pub streams_max: Option<u32>,
    /// Shards of its streams and caches (each counted once, whatever its
    /// replication factor).
    #[serde(default)]
    pub shards_max: Option<u32>,
    /// Bytes in its streams' and caches' logs, one replica's worth (what
    /// the shards' leaders hold).
    #[serde(default)]
    pub storage_bytes_max: Option<u64>,
    /// Subscriptions open at once across the cluster.
    #[serde(default)]
    pub subscribe_connections_max: Option<u32>,
    /// Bytes in its caches' logs: a Felix cache lives in its compacted
    /// log, so that is what it occupies (the brokers' hot maps are a
    /// bounded per-broker copy and not counted).
    #[serde(default)]
    pub cache_memory_bytes_max: Option<u64>,
}

impl Quotas {
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            (
                "publish_records_per_s_max",
                self.publish_records_per_s_max == Some(0),
            ),
            ("publish_bytes_per_s_max", self.publish_bytes_per_s_max == Some(0)),
            ("streams_max", self.streams_max == Some(0)),
            ("shards_max", self.shards_max == Some(0)),
            ("storage_bytes_max", self.storage_bytes_max == Some(0)),
            (
                "subscribe_connections_max",
                self.subscribe_connections_max == Some(0),
            ),
            ("cache_memory_bytes_max", self.cache_memory_bytes_max == Some(0)),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!(
                "a quota of 0 ({name}) would refuse everything it limits; omit it for no limit"
            ));
        }
        Ok(())
    }

    /// Whether a publish rate is limited.
    pub fn limits_rate(&self) -> bool {
        self.publish_records_per_s_max.is_some() || self.publish_bytes_per_s_max.is_some()
    }

    /// Whether a limit needs the cluster's usage (which brokers report).
    pub fn limits_usage(&self) -> bool {
        self.storage_bytes_max.is_some()
            || self.subscribe_connections_max.is_some()
            || self.cache_memory_bytes_max.is_some()
    }
}

/// What a request would add to a tenant's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adding {
    /// Records to a stream.
    StreamBytes,
    /// Entries to a cache (counted in storage too).
    CacheBytes,
    Subscription,
}

/// What a tenant or namespace uses of the limits brokers check: summed
/// over brokers by the control plane, reported per namespace by each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub storage_bytes: u64,
    #[serde(default)]
    pub cache_bytes: u64,
    #[serde(default)]
    pub subscriptions: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.storage_bytes = self.storage_bytes.saturating_add(o.storage_bytes);
        self.cache_bytes = self.cache_bytes.saturating_add(o.cache_bytes);
        self.subscriptions = self.subscriptions.saturating_add(o.subscriptions);
    }

    /// The first limit of `q` that this usage has reached and that
    /// `adding` would pass, as `(quota, used, limit)`.
    pub fn reached(&self, q: &Quotas, adding: Adding) -> Option<(&'static str, u64, u64)> {
        let bytes = matches!(adding, Adding::StreamBytes | Adding::CacheBytes);
        let checks = [
            (
                bytes,
                "storage_bytes_max",
                self.storage_bytes,
                q.storage_bytes_max,
            ),
            (
                adding == Adding::CacheBytes,
                "cache_memory_bytes_max",
                self.cache_bytes,
                q.cache_memory_bytes_max,
            ),
            (
                adding == Adding::Subscription,
                "subscribe_connections_max",
                self.subscriptions,
                q.subscribe_connections_max.map(u64::from),
            ),
        ];
        checks.into_iter().find_map(|(on, name, used, max)| match max {
            Some(max) if on && used >= max => Some((name, used, max)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub quotas: Quotas,
    /// Encryption at rest of the tenant's records; `None`: off. A `PUT`
    /// of the tenant sends the whole spec, so one that leaves it out turns
    /// encryption off (the data keys stay: what was sealed stays readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
}

impl TenantSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_text("display_name", &self.display_name)?;
        self.quotas.validate()?;
        if let Some(e) = &self.encryption {
            e.validate().map_err(|why| format!("encryption: {why}"))?;
        }
        Ok(())
    }
}

/// Longest master key id.
pub const KEY_ID_BYTES_MAX: usize = 64;
/// Shortest scheduled rotation period (a day): no key is dropped while
/// its tenant lives, so a day's period fills [`DATA_KEYS_MAX`] in about
/// three years (key ids then need a rotation asked for after old keys are
/// retired, which is not built).
pub const ROTATION_PERIOD_MS_MIN: u64 = 24 * 3600 * 1000;
/// Longest scheduled rotation period: ten years.
pub const ROTATION_PERIOD_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Data keys one tenant may have. None is ever dropped while the tenant
/// lives (a segment sealed under it may still be read), so past this a
/// rotation is refused.
pub const DATA_KEYS_MAX: usize = 1024;
/// Bytes of a data key's material.
pub const DATA_KEY_MATERIAL_BYTES: usize = 32;

/// A tenant's encryption at rest: under which of the brokers' master keys
/// its data keys are derived, and how often a new data key takes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSpec {
    /// The id of the brokers' master key (1 to 64 bytes of `A-Za-z0-9._-`).
    /// The control plane never holds the key, only its name.
    pub key_id: String,
    /// A new data key every this many milliseconds; 0: only when asked
    /// (`POST /v1/tenants/{tenant}/data-keys/rotate`).
    #[serde(default)]
    pub rotation_period_ms: u64,
}

impl EncryptionSpec {
    pub fn validate(&self) -> Result<(), String> {
        let k = &self.key_id;
        if k.is_empty() || k.len() > KEY_ID_BYTES_MAX {
            return Err(format!(
                "key_id must be 1 to {KEY_ID_BYTES_MAX} bytes, not {}",
                k.len()
            ));
        }
        if let Some(c) = k
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "key_id {k:?} has {c:?}: only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
            ));
        }
        let p = self.rotation_period_ms;
        if p != 0 && !(ROTATION_PERIOD_MS_MIN..=ROTATION_PERIOD_MS_MAX).contains(&p) {
            return Err(format!(
                "rotation_period_ms must be 0 (rotate only when asked) or {ROTATION_PERIOD_MS_MIN} \
                 to {ROTATION_PERIOD_MS_MAX} (a minute to ten years), not {p}"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub quotas: Quotas,
}

impl NamespaceSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_text("description", &self.description)?;
        self.quotas.validate()
    }
}

fn check_text(field: &str, s: &str) -> Result<(), String> {
    if s.len() > TEXT_BYTES_MAX {
        return Err(format!("{field} is longer than {TEXT_BYTES_MAX} bytes"));
    }
    Ok(())
}

// A stream's kind is the model's (`stream` or `compacted` here; a cache is
// a resource of its own).
pub use felix_model::{Durability, StreamKind};

fn default_shards() -> u32 {
    1
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// 0 (or absent): `min(REPLICATION_FACTOR_DEFAULT, brokers)`, decided
    /// when the create is applied and stored as the number it became.
    #[serde(default)]
    pub replication_factor: u32,
    /// `always`, `interval:<ms>` or `none`: the model's one spelling, so a
    /// body with any other is refused as it is read.
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub retention_ms: Option<u64>,
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    #[serde(default)]
    pub kind: StreamKind,
    /// Deliveries to a consumer group after which a record is
    /// dead-lettered; 0 is the broker's default.
    #[serde(default)]
    pub max_deliveries: u32,
    /// How keys map to shards (`fnv1a` or `slots`, `docs/format/wire.md`
    /// "Key routing"). Absent in a create: `slots`, stored as such. Absent
    /// in a stored record: made before routings had a name, so `fnv1a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_routing: Option<felix_model::KeyRouting>,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            shards: default_shards(),
            replication_factor: 0,
            durability: Durability::Always,
            retention_ms: None,
            retention_bytes: None,
            kind: StreamKind::Stream,
            max_deliveries: 0,
            key_routing: None,
        }
    }
}

fn check_shape(shards: u32, rf: u32) -> Result<(), String> {
    if shards == 0 || shards > SHARDS_MAX {
        return Err(format!("shards must be 1 to {SHARDS_MAX}, not {shards}"));
    }
    if rf > REPLICATION_FACTOR_MAX {
        return Err(format!(
            "replication_factor must be 1 to {REPLICATION_FACTOR_MAX} (or 0 for the default), not {rf}"
        ));
    }
    Ok(())
}

impl StreamSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_shape(self.shards, self.replication_factor)?;
        if self.kind == StreamKind::Cache {
            return Err("kind \"cache\": a cache is created as a cache, not as a stream".into());
        }
        if self.retention_ms == Some(0) || self.retention_bytes == Some(0) {
            return Err("a retention of 0 would delete every record; omit it to keep all".into());
        }
        Ok(())
    }
}

/// What may change on a live stream: retention (reaches brokers through
/// the feed) and the dead-letter threshold. Shards and replication factor
/// are fixed at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamUpdate {
    /// `Some(None)` (JSON `null`) removes the limit; absent keeps it.
    #[serde(default, with = "optional_limit")]
    pub retention_ms: Option<Option<u64>>,
    #[serde(default, with = "optional_limit")]
    pub retention_bytes: Option<Option<u64>>,
    #[serde(default)]
    pub max_deliveries: Option<u32>,
}

mod optional_limit {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<u64>>, s: S) -> Result<S::Ok, S::Error> {
        v.flatten().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
        Ok(Some(Option::<u64>::deserialize(d)?))
    }
}

impl StreamUpdate {
    pub fn apply_to(&self, spec: &StreamSpec) -> Result<StreamSpec, String> {
        let mut s = spec.clone();
        if let Some(r) = self.retention_ms {
            s.retention_ms = r;
        }
        if let Some(r) = self.retention_bytes {
            s.retention_bytes = r;
        }
        if let Some(m) = self.max_deliveries {
            s.max_deliveries = m;
        }
        s.validate()?;
        Ok(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// 0 (or absent): `min(REPLICATION_FACTOR_DEFAULT, brokers)`, decided
    /// when the create is applied and stored as the number it became.
    #[serde(default)]
    pub replication_factor: u32,
    /// The TTL of a put that gives none; `None` keeps entries until deleted
    /// or evicted.
    #[serde(default)]
    pub default_ttl_ms: Option<u64>,
    /// Refused when set: brokers bound cache memory per broker
    /// (`hot_cache_bytes_max`). Kept so a document that names it gets that
    /// answer rather than "unknown field".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes_max: Option<u64>,
    /// How keys map to shards (`fnv1a` or `slots`, `docs/format/wire.md`
    /// "Key routing"). Absent in a create: `slots`, stored as such. Absent
    /// in a stored record: made before routings had a name, so `fnv1a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_routing: Option<felix_model::KeyRouting>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            shards: 1,
            replication_factor: 0,
            default_ttl_ms: None,
            memory_bytes_max: None,
            key_routing: None,
        }
    }
}

impl CacheSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_shape(self.shards, self.replication_factor)?;
        if self.default_ttl_ms == Some(0) {
            return Err("default_ttl_ms of 0 would expire every put at once; omit it for no TTL".into());
        }
        // Refused rather than accepted and ignored: brokers bound a
        // cache's memory per broker (`hot_cache_bytes_max`), not per cache.
        if self.memory_bytes_max.is_some() {
            return Err(
                "memory_bytes_max is not enforced per cache (a broker bounds the memory of all \
                        its caches with hot_cache_bytes_max; values beyond it are read from disk): omit it"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Where one shard's replicas live. `replicas[0]` is the preferred leader.
/// While a replica moves, `replicas` is the target and `leaving` the
/// replicas brokers remove once the new ones have caught up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The shard's Raft group id, unique in the cluster and never reused.
    pub group: u64,
    pub replicas: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<u32>,
    /// The preferred leader (`replicas[0]`) was chosen by an operator
    /// (`TransferLeader`): leader balancing leaves it where it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leader_pinned: bool,
    /// The Raft node ids that found the group: its first replicas as
    /// registered when it was placed. Every broker reads the same list,
    /// so they agree on who bootstraps it; a replica added later (or a
    /// founder rebuilt under a new node id) joins instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub founders: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub spec: StreamSpec,
    pub placement: Vec<ShardPlacement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    pub spec: CacheSpec,
    pub placement: Vec<ShardPlacement>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub spec: NamespaceSpec,
    pub streams: BTreeMap<String, Stream>,
    pub caches: BTreeMap<String, Cache>,
}

/// An upstream identity provider a tenant trusts for token exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdpIssuer {
    /// The `iss` claim, matched exactly.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one.
    pub audiences: Vec<String>,
    #[serde(default)]
    pub discovery_url: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Public keys given inline (a JWKS document's `keys`), for IdPs the
    /// control plane cannot reach and for tests.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub claim_mappings: ClaimMappings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMappings {
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    #[serde(default)]
    pub groups_claim: Option<String>,
}

fn default_subject_claim() -> String {
    "sub".into()
}

impl Default for ClaimMappings {
    fn default() -> Self {
        ClaimMappings {
            subject_claim: default_subject_claim(),
            groups_claim: None,
        }
    }
}

impl IdpIssuer {
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() || self.issuer.len() > TEXT_BYTES_MAX {
            return Err("issuer must be 1 to 1024 bytes".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return Err("audiences must name at least one non-empty audience".into());
        }
        let sources = [
            self.discovery_url.is_some(),
            self.jwks_url.is_some(),
            self.jwks.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err("give exactly one of discovery_url, jwks_url or jwks".into());
        }
        for url in [&self.discovery_url, &self.jwks_url].into_iter().flatten() {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{url:?} is not an http(s) URL"));
            }
        }
        if let Some(j) = &self.jwks {
            if !j.get("keys").is_some_and(|k| k.is_array()) {
                return Err("jwks must be a JWKS document with a \"keys\" array".into());
            }
        }
        if self.claim_mappings.subject_claim.is_empty() {
            return Err("claim_mappings.subject_claim must not be empty".into());
        }
        Ok(())
    }
}

/// One Ed25519 key a tenant's Felix tokens are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// PKCS#8 v2 document, base64url. Replicated with the rest of the
    /// state: every control-plane node can sign.
    pub pkcs8: String,
    /// The raw 32-byte public key, base64url (the JWK's `x`).
    pub public: String,
    pub created_ms: u64,
    /// Set when a newer key took over: the key still verifies (it stays in
    /// the JWKS) until then, so tokens it signed live out their expiry.
    #[serde(default)]
    pub retire_at_ms: Option<u64>,
}

/// The material one of a tenant's data keys is derived from. A broker
/// derives the AES key itself with HKDF from its master key
/// `master_key_id`, this material, the tenant and `id`: the material alone
/// opens nothing, and once the tenant (and with it its materials) is
/// deleted, what is left of its records can no longer be opened.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    /// Unique in the cluster, never reused; 0 is no key.
    pub id: u32,
    pub master_key_id: String,
    /// 32 random bytes, base64url without padding. Replicated with the
    /// rest of the state and sent to brokers in the feed, never shown by
    /// the tenant API.
    pub material: String,
    pub created_ms: u64,
}

impl DataKey {
    /// Why `material` is not 32 bytes of base64url without padding.
    pub fn material_problem(material: &str) -> Option<String> {
        use base64::Engine;
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(material) {
            Ok(b) if b.len() == DATA_KEY_MATERIAL_BYTES => None,
            Ok(b) => Some(format!(
                "a data key's material is {DATA_KEY_MATERIAL_BYTES} bytes, not {}",
                b.len()
            )),
            Err(e) => Some(format!("a data key's material is not base64url: {e}")),
        }
    }
}

/// Never prints the material (a `Debug` may reach a log).
impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("master_key_id", &self.master_key_id)
            .field("material", &"<redacted>")
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub spec: TenantSpec,
    pub namespaces: BTreeMap<String, Namespace>,
    pub idp_issuers: BTreeMap<String, IdpIssuer>,
    pub rules: Rules,
    /// Oldest first; the last one signs.
    pub keys: Vec<SigningKey>,
    /// Oldest first; the last one seals new records (while encryption is
    /// on). Kept while encryption is off: what was sealed stays readable.
    #[serde(default)]
    pub data_keys: Vec<DataKey>,
}

impl Tenant {
    /// The data key new records are sealed under, if any.
    pub fn data_key(&self) -> Option<&DataKey> {
        self.data_keys.last()
    }

    /// Whether scheduled rotation is due at `now_ms`: encryption is on
    /// with a rotation period, and the newest data key (if any) is at
    /// least that old.
    pub fn data_key_due(&self, now_ms: u64) -> bool {
        let Some(e) = &self.spec.encryption else {
            return false;
        };
        if e.rotation_period_ms == 0 {
            return false;
        }
        self.data_key()
            .is_none_or(|k| k.created_ms.saturating_add(e.rotation_period_ms) <= now_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerStatus {
    Active,
    /// Its leaderships and replicas are moving away; it gets no new ones.
    Draining,
    /// Missed three heartbeats.
    Down,
}

/// What a broker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerRegistration {
    pub id: u32,
    /// Where clients reach it (QUIC).
    pub client_addr: String,
    /// Where other brokers replicate with it.
    pub raft_addr: String,
    #[serde(default)]
    pub zone: Option<String>,
    /// Shard replicas it may host.
    #[serde(default = "default_capacity")]
    pub shards_max: u32,
    /// Its Raft node id (broker id and incarnation): a broker rebuilt from
    /// an empty disk registers a new one, so its peers tell it from the
    /// replica it replaces. 0 when the broker did not say.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub node_id: u64,
    /// Where its Redis door listens (`host:port`), when it has one: the
    /// other brokers' doors name it to Redis cluster clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_addr: Option<String>,
    /// Where its Kafka door listens (`host:port`), when it has one: every
    /// door's Metadata names each partition's leader's door.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_addr: Option<String>,
    /// The region it is in; a broker that does not say is in the default
    /// one. The control plane refuses a region other than its own.
    #[serde(default = "default_region")]
    pub region: String,
}

fn default_region() -> String {
    felix_model::names::REGION_DEFAULT.to_owned()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_capacity() -> u32 {
    10_000
}

impl BrokerRegistration {
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("broker id 0 is reserved".into());
        }
        let redis = self.redis_addr.iter().map(|a| ("redis_addr", a));
        let kafka = self.kafka_addr.iter().map(|a| ("kafka_addr", a));
        for (k, a) in [("client_addr", &self.client_addr), ("raft_addr", &self.raft_addr)]
            .into_iter()
            .chain(redis)
            .chain(kafka)
        {
            if a.is_empty() || !a.contains(':') || a.len() > felix_model::limits::NAME_BYTES_MAX {
                return Err(format!("{k} {a:?} is not host:port"));
            }
        }
        if self.shards_max == 0 {
            return Err("shards_max must be at least 1".into());
        }
        if let Some(z) = &self.zone {
            if let Some(why) = felix_model::names::name_problem(z) {
                return Err(format!("zone {z:?}: {why}"));
            }
        }
        if let Some(why) = felix_model::names::region_problem(&self.region) {
            return Err(format!("region {:?}: {why}", self.region));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub registration: BrokerRegistration,
    pub status: BrokerStatus,
    /// When it last changed status (the grace period before re-placement
    /// counts from here).
    pub since_ms: u64,
    /// Being decommissioned: draining, and removed from the registry for
    /// good (its id never reused) once no replica is left on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decommissioning: bool,
}

/// The permissions a Felix token carries, as brokers read them.
pub type Permissions = Vec<Grant>;

/// Bridges one control plane holds: each is a set of senders on the
/// brokers that lead its streams' shards, so the count is bounded well
/// below what those brokers could run.
pub const BRIDGES_MAX: usize = 256;
/// Stream patterns one bridge may carry.
pub const BRIDGE_STREAMS_MAX: usize = 64;
/// Bootstrap addresses one bridge's target may list: a few suffice to
/// find the target's leaders, the rest come from its metadata.
pub const BRIDGE_TARGET_BROKERS_MAX: usize = 16;
/// Largest CA bundle a bridge's target may name: a handful of PEM
/// certificates, and every bridge is replicated and sent to every broker.
pub const BRIDGE_CA_PEM_BYTES_MAX: usize = 64 * 1024;
/// Longest server name a target's certificates are checked against (a
/// DNS name's longest).
pub const BRIDGE_SERVER_NAME_BYTES_MAX: usize = 253;
/// What a PEM bundle holding a certificate contains.
const PEM_CERTIFICATE_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
/// A pattern part that matches any namespace or stream.
pub const BRIDGE_PATTERN_ANY: &str = "*";

/// Where a bridge delivers: another cluster's brokers, as a Felix client reaches them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTarget {
    /// The target cluster's region; must differ from this control plane's region.
    pub region: String,
    /// Bootstrap addresses of target brokers, "host:port", 1..=BRIDGE_TARGET_BROKERS_MAX.
    pub brokers: Vec<String>,
    /// The name the target brokers' certificates are checked against.
    pub server_name: String,
    /// PEM of the CA the target brokers' certificates must chain to
    /// (required, non-empty, at most [`BRIDGE_CA_PEM_BYTES_MAX`], holding a
    /// certificate).
    pub ca_pem: String,
    /// A Felix token of the target cluster allowed to publish to the
    /// target streams (may be empty when the target does not require
    /// tokens). SECRET: never shown by list/describe, only carried in the
    /// brokers' feed.
    #[serde(default)]
    pub token: String,
}

/// Never prints the token (a `Debug` may reach a log).
impl std::fmt::Debug for BridgeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeTarget")
            .field("region", &self.region)
            .field("brokers", &self.brokers)
            .field("server_name", &self.server_name)
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("token_set", &!self.token.is_empty())
            .finish()
    }
}

impl BridgeTarget {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(why) = felix_model::names::region_problem(&self.region) {
            return Err(format!("region {:?}: {why}", self.region));
        }
        if self.brokers.is_empty() || self.brokers.len() > BRIDGE_TARGET_BROKERS_MAX {
            return Err(format!(
                "brokers must list 1 to {BRIDGE_TARGET_BROKERS_MAX} addresses (BRIDGE_TARGET_BROKERS_MAX), not {}",
                self.brokers.len()
            ));
        }
        for a in &self.brokers {
            if let Some(why) = address_problem(a) {
                return Err(format!("broker {a:?}: {why}"));
            }
        }
        let s = &self.server_name;
        if s.is_empty() || s.len() > BRIDGE_SERVER_NAME_BYTES_MAX {
            return Err(format!(
                "server_name must be 1 to {BRIDGE_SERVER_NAME_BYTES_MAX} bytes, not {}",
                s.len()
            ));
        }
        // A DNS name or an IP address; anything else could never match a
        // certificate, so it is refused now rather than at every connect.
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
        {
            return Err(format!(
                "server_name {s:?} has {c:?}: a DNS name or an IP address is expected"
            ));
        }
        if self.ca_pem.is_empty() || self.ca_pem.len() > BRIDGE_CA_PEM_BYTES_MAX {
            return Err(format!(
                "ca_pem must be 1 to {BRIDGE_CA_PEM_BYTES_MAX} bytes (BRIDGE_CA_PEM_BYTES_MAX), not {}",
                self.ca_pem.len()
            ));
        }
        if !self.ca_pem.contains(PEM_CERTIFICATE_BEGIN) {
            return Err(format!(
                "ca_pem holds no certificate (no {PEM_CERTIFICATE_BEGIN:?} line): give the PEM of the CA the target's brokers chain to"
            ));
        }
        let max = felix_model::limits::TOKEN_BYTES_MAX;
        if self.token.len() > max {
            return Err(format!(
                "the token is {} bytes; the target's brokers take at most {max}",
                self.token.len()
            ));
        }
        // A JWT is printable ASCII without spaces; a stray newline from a
        // token file would make every handshake fail.
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces or line breaks".into());
        }
        Ok(())
    }
}

/// Why `a` is not a `host:port` a client could dial, if it is not.
fn address_problem(a: &str) -> Option<&'static str> {
    if a.len() > felix_model::limits::NAME_BYTES_MAX {
        return Some("longer than 255 bytes");
    }
    let Some((host, port)) = a.rsplit_once(':') else {
        return Some("not host:port");
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Some("not host:port (the host is empty or has a space or '/')");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => None,
        _ => Some("not host:port (the port must be 1 to 65535)"),
    }
}

/// What a bridge carries and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    /// The tenant whose streams it carries: a bridge never reaches across tenants.
    pub tenant: String,
    /// "namespace/stream" patterns within the tenant; either part may be
    /// exactly "*" (any). 1..=BRIDGE_STREAMS_MAX patterns.
    pub streams: Vec<String>,
    pub target: BridgeTarget,
}

impl BridgeSpec {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(why) = felix_model::names::name_problem(&self.tenant) {
            return Err(format!("tenant {:?}: {why}", self.tenant));
        }
        if self.streams.is_empty() || self.streams.len() > BRIDGE_STREAMS_MAX {
            return Err(format!(
                "streams must list 1 to {BRIDGE_STREAMS_MAX} patterns (BRIDGE_STREAMS_MAX), not {}",
                self.streams.len()
            ));
        }
        for p in &self.streams {
            if let Some(why) = bridge_pattern_problem(p) {
                return Err(format!("stream pattern {p:?}: {why}"));
            }
        }
        self.target.validate().map_err(|why| format!("target: {why}"))
    }

    /// Whether it carries stream `namespace/stream` of its tenant.
    pub fn carries(&self, namespace: &str, stream: &str) -> bool {
        self.streams
            .iter()
            .any(|p| bridge_pattern_matches(p, namespace, stream))
    }
}

/// Why `pattern` is not a bridge's `namespace/stream` pattern, if it is
/// not: exactly one `/`, each side [`BRIDGE_PATTERN_ANY`] or a valid name
/// (a stream's side may carry dead-letter suffixes, as stream names do).
pub fn bridge_pattern_problem(pattern: &str) -> Option<String> {
    let Some((ns, stream)) = pattern.split_once('/') else {
        return Some("a pattern is namespace/stream (either part may be \"*\")".into());
    };
    if ns != BRIDGE_PATTERN_ANY {
        if let Some(why) = felix_model::names::name_problem(ns) {
            return Some(format!("namespace {ns:?}: {why}"));
        }
    }
    if stream != BRIDGE_PATTERN_ANY {
        // A second '/' lands here and is refused by the name rule.
        if let Some(why) = felix_model::names::stream_name_problem(stream) {
            return Some(format!("stream {stream:?}: {why}"));
        }
    }
    None
}

/// Whether a bridge's `pattern` (`namespace/stream`, either part
/// [`BRIDGE_PATTERN_ANY`]) matches stream `namespace/stream`. Parts match
/// exactly or by `*`, never by prefix: a pattern that is not
/// `namespace/stream` matches nothing.
pub fn bridge_pattern_matches(pattern: &str, namespace: &str, stream: &str) -> bool {
    let Some((ns, st)) = pattern.split_once('/') else {
        return false;
    };
    let part = |p: &str, name: &str| p == BRIDGE_PATTERN_ANY || p == name;
    !st.contains('/') && part(ns, namespace) && part(st, stream)
}

/// Why `name` cannot name a bridge, if it cannot: the rule of every
/// other name (1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot),
/// so it is safe in a URL path and a metric label.
pub fn bridge_name_problem(name: &str) -> Option<&'static str> {
    felix_model::names::name_problem(name)
}

/// A tenant's streams carried to another region's cluster, as a Felix
/// client publishing there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub name: String,
    pub spec: BridgeSpec,
    /// A paused bridge keeps its source positions and sends nothing.
    #[serde(default)]
    pub paused: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// One shard's progress on a bridge, as the broker carrying it reports
/// in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeLag {
    pub bridge: String,
    /// "tenant/namespace/stream"
    pub stream: String,
    pub shard: u32,
    /// The next source offset to carry (everything below is in the target).
    pub position: u64,
    /// The source shard's committed end (high watermark).
    pub end: u64,
    /// The last error sending to the target, if the bridge is failing.
    #[serde(default)]
    pub error: Option<String>,
}

impl BridgeLag {
    /// Records not yet carried (0 when a report has the position past the
    /// end, as a broker that just lost leadership may).
    pub fn lag(&self) -> u64 {
        self.end.saturating_sub(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn spec() -> BridgeSpec {
        BridgeSpec {
            tenant: "acme".into(),
            streams: vec!["pay/orders".into(), "audit/*".into()],
            target: BridgeTarget {
                region: "us".into(),
                brokers: vec!["us1.example:7070".into(), "[::1]:7071".into()],
                server_name: "brokers.us.example".into(),
                ca_pem: CA.into(),
                token: "eyJhbGciOiJFZERTQSJ9.e30.sig".into(),
            },
        }
    }

    #[test]
    fn a_pattern_matches_a_part_exactly_or_by_star_and_never_by_prefix() {
        assert!(bridge_pattern_matches("pay/orders", "pay", "orders"));
        assert!(!bridge_pattern_matches("pay/orders", "pay", "orders2"));
        assert!(!bridge_pattern_matches("pay/orders", "payroll", "orders"));
        assert!(!bridge_pattern_matches("pay/ord", "pay", "orders"));
        assert!(bridge_pattern_matches("pay/*", "pay", "anything.dlq"));
        assert!(!bridge_pattern_matches("pay/*", "other", "orders"));
        assert!(bridge_pattern_matches("*/orders", "other", "orders"));
        assert!(!bridge_pattern_matches("*/orders", "other", "refunds"));
        assert!(bridge_pattern_matches("*/*", "x", "y"));
        // `*` is a whole part, not a glob.
        assert!(!bridge_pattern_matches("p*/orders", "pay", "orders"));
        assert!(!bridge_pattern_matches("pay/or*", "pay", "orders"));
        // Not namespace/stream: matches nothing.
        for bad in ["orders", "*", "", "*/*/*", "pay/orders/x"] {
            assert!(!bridge_pattern_matches(bad, "pay", "orders"), "{bad}");
        }
        let s = spec();
        assert!(s.carries("pay", "orders") && s.carries("audit", "logins"));
        assert!(!s.carries("pay", "refunds") && !s.carries("other", "orders"));
    }

    #[test]
    fn a_bridge_spec_is_refused_with_what_is_wrong() {
        spec().validate().unwrap();
        let mut no_token = spec();
        no_token.target.token.clear();
        no_token.validate().unwrap();
        let mut star = spec();
        star.streams = vec!["*/*".into(), "pay/orders.dlq".into()];
        star.validate().unwrap();
        let mut full = spec();
        full.streams = (0..BRIDGE_STREAMS_MAX).map(|i| format!("ns/s{i}")).collect();
        full.target.brokers = (0..BRIDGE_TARGET_BROKERS_MAX)
            .map(|i| format!("h{i}:7070"))
            .collect();
        full.validate().unwrap();

        type Change = Box<dyn Fn(&mut BridgeSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.tenant = "a b".into()), "tenant \"a b\""),
            (Box::new(|s| s.streams.clear()), "streams must list 1 to 64"),
            (
                Box::new(|s| s.streams = (0..=BRIDGE_STREAMS_MAX).map(|i| format!("ns/s{i}")).collect()),
                "streams must list 1 to 64",
            ),
            (
                Box::new(|s| s.streams = vec!["orders".into()]),
                "a pattern is namespace/stream",
            ),
            (Box::new(|s| s.streams = vec!["pay/or*".into()]), "stream \"or*\""),
            (
                Box::new(|s| s.streams = vec!["p ay/*".into()]),
                "namespace \"p ay\"",
            ),
            (Box::new(|s| s.streams = vec!["pay/a/b".into()]), "stream \"a/b\""),
            (Box::new(|s| s.streams = vec!["/orders".into()]), "namespace \"\""),
            (
                Box::new(|s| s.target.region = "EU".into()),
                "target: region \"EU\"",
            ),
            (
                Box::new(|s| s.target.brokers.clear()),
                "brokers must list 1 to 16",
            ),
            (
                Box::new(|s| s.target.brokers = vec!["h:1".into(); BRIDGE_TARGET_BROKERS_MAX + 1]),
                "brokers must list 1 to 16",
            ),
            (
                Box::new(|s| s.target.brokers = vec!["host".into()]),
                "not host:port",
            ),
            (
                Box::new(|s| s.target.brokers = vec![":7070".into()]),
                "the host is empty",
            ),
            (
                Box::new(|s| s.target.brokers = vec!["h:0".into()]),
                "the port must be",
            ),
            (
                Box::new(|s| s.target.brokers = vec!["h:70700".into()]),
                "the port must be",
            ),
            (
                Box::new(|s| s.target.brokers = vec!["h/x:1".into()]),
                "has a space or '/'",
            ),
            (
                Box::new(|s| s.target.server_name.clear()),
                "server_name must be 1 to 253",
            ),
            (
                Box::new(|s| s.target.server_name = "a b".into()),
                "server_name \"a b\" has ' '",
            ),
            (Box::new(|s| s.target.ca_pem.clear()), "ca_pem must be 1 to 65536"),
            (
                Box::new(|s| s.target.ca_pem = format!("{CA}{}", "x".repeat(BRIDGE_CA_PEM_BYTES_MAX))),
                "ca_pem must be 1 to 65536",
            ),
            (
                Box::new(|s| s.target.ca_pem = "not a pem".into()),
                "ca_pem holds no certificate",
            ),
            (
                Box::new(|s| s.target.token = "t".repeat(felix_model::limits::TOKEN_BYTES_MAX + 1)),
                "the token is 16385 bytes",
            ),
            (Box::new(|s| s.target.token = "abc\n".into()), "printable ASCII"),
        ];
        for (change, says) in cases {
            let mut s = spec();
            change(&mut s);
            let e = s.validate().unwrap_err();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }

    #[test]
    fn a_bridge_target_never_shows_its_token_in_debug_and_unknown_fields_are_refused() {
        let s = spec();
        let text = format!("{s:?}");
        assert!(!text.contains(&s.target.token), "{text}");
        assert!(text.contains("token_set: true"), "{text}");
        // A misspelt optional field is refused, not dropped: a bridge
        // without the token meant for it would fail every publish.
        let mut v = serde_json::to_value(&s).unwrap();
        let t = v["target"].as_object_mut().unwrap();
        let token = t.remove("token").unwrap();
        t.insert("tokn".into(), token);
        let e = serde_json::from_value::<BridgeSpec>(v).unwrap_err();
        assert!(e.to_string().contains("tokn"), "{e}");
        // And an absent token is an empty one.
        let mut v = serde_json::to_value(&s).unwrap();
        v["target"].as_object_mut().unwrap().remove("token");
        assert_eq!(serde_json::from_value::<BridgeSpec>(v).unwrap().target.token, "");
    }

    #[test]
    fn a_lag_report_counts_what_is_left_and_never_underflows() {
        let mut l = BridgeLag {
            bridge: "b".into(),
            stream: "acme/pay/orders".into(),
            shard: 0,
            position: 40,
            end: 100,
            error: None,
        };
        assert_eq!(l.lag(), 60);
        l.position = 120;
        assert_eq!(l.lag(), 0);
        let back: BridgeLag =
            serde_json::from_str(r#"{"bridge":"b","stream":"a/b/c","shard":1,"position":2,"end":3}"#)
                .unwrap();
        assert_eq!(back.error, None);
    }
}
