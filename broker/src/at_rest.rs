//! Encryption at rest: the broker's master key, and the tenants' data keys
//! derived under it from the materials the control plane keeps
//! (`docs/security.md`, "Encryption at rest").
//!
//! A data key is HKDF-SHA256 of the master key, salted with its material
//! and bound to its tenant and id. The control plane holds materials and
//! never the master key; a broker holds the master key and the materials
//! of its tenants, and derives the keys in memory. Neither alone decrypts
//! a byte, and deleting a tenant (its materials) leaves its ciphertext
//! unreadable wherever copies of it went. [`MasterKey`] is where a KMS
//! plugs in: anything that turns (tenant, id, material) into the same
//! 32 bytes on every broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use felix_controlplane::model::{DataKey, EncryptionSpec};
use felix_log::batch::layout::{SEAL_KEY_BYTES, SEAL_NONCE_BYTES};
use felix_log::batch::seal::{Keyring, SealKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// Bytes of a master key file read at most.
pub const MASTER_KEY_FILE_BYTES_MAX: usize = 4 << 10;
/// Longest master key id.
pub const MASTER_KEY_ID_BYTES_MAX: usize = 64;
/// Data keys held per tenant (the control plane refuses more).
pub const TENANT_KEYS_MAX: usize = 1024;
/// Tenants whose keys are held.
pub const TENANTS_MAX: usize = 100_000;
/// How long after the control plane made a data key it starts sealing:
/// by then every replica of the tenant's shards has heard of it through
/// the feed (changes are long-polled, so within moments), and no follower
/// meets an entry it cannot open. Clocks of brokers and control plane
/// must agree within it (NTP).
pub const KEY_ACTIVATION_MS: i64 = 5_000;
/// Bytes of the kept keys file read at most.
pub const KEYS_FILE_BYTES_MAX: usize = 64 << 20;
/// The file under the data directory that keeps the tenants' materials
/// (useless without the master key), so a restart reads sealed shards
/// before the control plane answers.
pub const KEYS_FILE: &str = "at-rest-keys.json";
/// First word of a master key file's line.
const MASTER_LINE_TAG: &str = "felix-master-key";
/// HKDF's info prefix: a derivation of another purpose never collides.
const DERIVE_INFO: &[u8] = b"felix tenant data key v1";
/// What the master key's check value is a MAC of.
const CHECK_INPUT: &[u8] = b"felix master key check v1";

/// Where tenants' data keys come from.
pub trait MasterKey: Send + Sync + std::fmt::Debug {
    /// The id tenants' `encryption.key_id` names.
    fn id(&self) -> &str;
    /// The data key `key_id` of `tenant`, from its material. The same on
    /// every broker holding this master key.
    fn derive(&self, tenant: &str, key_id: u32, material: &[u8; SEAL_KEY_BYTES]) -> [u8; SEAL_KEY_BYTES];
    /// A value that tells this key from another of the same id without
    /// revealing it (kept beside the data, checked at start).
    fn check(&self) -> String;
}

/// A master key read from a file (`felix master-key new`): one line,
/// `felix-master-key <id> <32 bytes, base64url>`.
pub struct FileMasterKey {
    id: String,
    secret: [u8; SEAL_KEY_BYTES],
}

impl std::fmt::Debug for FileMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileMasterKey({})", self.id)
    }
}

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MASTER_KEY_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl FileMasterKey {
    pub fn parse(text: &str) -> Result<FileMasterKey, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or("it holds no key line")?;
        if lines.next().is_some() {
            return Err("it holds more than one key line".into());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [tag, id, secret] = words[..] else {
            return Err(format!("expected `{MASTER_LINE_TAG} <id> <key>`"));
        };
        if tag != MASTER_LINE_TAG {
            return Err(format!("expected `{MASTER_LINE_TAG} <id> <key>`"));
        }
        if !id_ok(id) {
            return Err(format!(
                "the id {id:?} is not 1 to {MASTER_KEY_ID_BYTES_MAX} of A-Z a-z 0-9 . _ -"
            ));
        }
        let secret: [u8; SEAL_KEY_BYTES] = URL_SAFE_NO_PAD
            .decode(secret)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the key is not 32 bytes of base64url")?;
        Ok(FileMasterKey {
            id: id.to_owned(),
            secret,
        })
    }

    pub fn load(path: &Path) -> Result<FileMasterKey, BrokerError> {
        let err = |why: String| BrokerError::Keys(format!("master key file {}: {why}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > MASTER_KEY_FILE_BYTES_MAX as u64 {
            return Err(err(format!("larger than {MASTER_KEY_FILE_BYTES_MAX} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        FileMasterKey::parse(&text).map_err(err)
    }

    /// A new key file's text.
    pub fn generate(id: &str) -> Result<String, BrokerError> {
        if !id_ok(id) {
            return Err(BrokerError::Invalid(format!(
                "a master key id is 1 to {MASTER_KEY_ID_BYTES_MAX} of A-Z a-z 0-9 . _ -, not {id:?}"
            )));
        }
        let mut secret = [0u8; SEAL_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| BrokerError::Keys("the system's random source failed".into()))?;
        Ok(format!(
            "# Felix master key: every broker of the cluster needs the same file; keep it secret.\n{MASTER_LINE_TAG} {id} {}\n",
            URL_SAFE_NO_PAD.encode(secret)
        ))
    }
}

struct KeyLen;
impl ring::hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        SEAL_KEY_BYTES
    }
}

impl MasterKey for FileMasterKey {
    fn id(&self) -> &str {
        &self.id
    }

    fn derive(&self, tenant: &str, key_id: u32, material: &[u8; SEAL_KEY_BYTES]) -> [u8; SEAL_KEY_BYTES] {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, material);
        let prk = salt.extract(&self.secret);
        let id = key_id.to_le_bytes();
        let len = (tenant.len() as u32).to_le_bytes();
        let info: [&[u8]; 4] = [DERIVE_INFO, &len, tenant.as_bytes(), &id];
        let mut out = [0u8; SEAL_KEY_BYTES];
        prk.expand(&info, KeyLen)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 gives 32 bytes");
        out
    }

    fn check(&self) -> String {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        URL_SAFE_NO_PAD.encode(&ring::hmac::sign(&k, CHECK_INPUT).as_ref()[..16])
    }
}

/// The id of the master key `felix dev` makes.
pub const DEV_MASTER_KEY_ID: &str = "dev-master";
/// Where `felix dev` keeps it, under the data directory.
pub const DEV_MASTER_KEY_FILE: &str = "dev-master.key";

/// Writes a key file that must not exist yet (mode 0600, fsynced).
pub fn write_new_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// `felix dev`'s `[encryption]`: its own master key under the data
/// directory, made on first start.
pub fn dev_master_key(data_dir: &Path) -> Result<crate::config::EncryptionConfig, BrokerError> {
    std::fs::create_dir_all(data_dir)?;
    let file = data_dir.join(DEV_MASTER_KEY_FILE);
    if !file.exists() {
        let text = FileMasterKey::generate(DEV_MASTER_KEY_ID)?;
        match write_new_key_file(&file, &text) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e.into()),
            _ => {}
        }
    }
    Ok(crate::config::EncryptionConfig {
        master_key_file: file,
    })
}

/// What [`KEYS_FILE`] holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    master_key_id: String,
    master_check: String,
    tenants: BTreeMap<String, KeptTenant>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeptTenant {
    encryption: Option<EncryptionSpec>,
    keys: Vec<DataKey>,
}

#[derive(Debug, Default)]
struct TenantKeys {
    kept: KeptTenant,
    /// Derived keys by id (those of another master key are missing).
    keys: HashMap<u32, DataKeyBytes>,
}

/// A tenant's data key as derived (never written anywhere).
#[derive(Clone)]
struct DataKeyBytes([u8; SEAL_KEY_BYTES]);

impl std::fmt::Debug for DataKeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeyBytes(..)")
    }
}

/// What HKDF's info starts with for a shard's key.
const SHARD_INFO: &[u8] = b"felix shard key v1";

impl DataKeyBytes {
    /// The key shard `shard` seals with: each shard its own, so the random
    /// nonces of one key are drawn per shard, not across a whole tenant.
    fn for_shard(&self, shard: u64) -> SealKey {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]);
        let prk = salt.extract(&self.0);
        let id = shard.to_le_bytes();
        let info: [&[u8]; 2] = [SHARD_INFO, &id];
        let mut out = [0u8; SEAL_KEY_BYTES];
        prk.expand(&info, KeyLen)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 gives 32 bytes");
        SealKey::new(&out)
    }
}

impl TenantKeys {
    /// The key new batches are sealed with, while encryption is on: the
    /// newest made at least [`KEY_ACTIVATION_MS`] ago.
    fn current(&self, now_ms: i64) -> Option<u32> {
        self.kept.encryption.as_ref()?;
        self.kept
            .keys
            .iter()
            .rev()
            .find(|k| {
                i64::try_from(k.created_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_add(KEY_ACTIVATION_MS)
                    <= now_ms
            })
            .map(|k| k.id)
    }
}

/// The tenants' data keys this broker holds.
pub struct Tenants {
    clock: crate::clock::Clock,
    master: Option<Arc<dyn MasterKey>>,
    tenants: RwLock<HashMap<String, TenantKeys>>,
    path: PathBuf,
    random: SystemRandom,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("master", &self.master)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Tenants {
    /// Reads the kept keys under `data_dir`. Refuses, with what to do, a
    /// master key other than the one the kept keys were derived under,
    /// and a missing one when a tenant's keys are kept.
    pub fn open(
        data_dir: &Path,
        master: Option<Arc<dyn MasterKey>>,
        clock: crate::clock::Clock,
    ) -> Result<Arc<Tenants>, BrokerError> {
        let path = data_dir.join(KEYS_FILE);
        let kept: Kept = match std::fs::read(&path) {
            Ok(b) if b.len() > KEYS_FILE_BYTES_MAX => {
                return Err(BrokerError::Keys(format!(
                    "{}: larger than {KEYS_FILE_BYTES_MAX} bytes",
                    path.display()
                )))
            }
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| BrokerError::Keys(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kept::default(),
            Err(e) => return Err(BrokerError::Keys(format!("{}: {e}", path.display()))),
        };
        let holds_keys = kept.tenants.values().any(|t| !t.keys.is_empty());
        match &master {
            None if holds_keys && !kept.master_key_id.is_empty() => {
                return Err(BrokerError::Keys(format!(
                    "this data directory holds tenants' data encrypted at rest under master key {:?}, and no master key is configured: set [encryption] master_key_file",
                    kept.master_key_id
                )))
            }
            Some(m) if holds_keys && (m.id() != kept.master_key_id || m.check() != kept.master_check) => {
                return Err(BrokerError::Keys(format!(
                    "the configured master key ({:?}) is not the one this data directory's data is encrypted under ({:?}): configure that key's file",
                    m.id(),
                    kept.master_key_id
                )))
            }
            _ => {}
        }
        let t = Arc::new(Tenants {
            clock,
            master,
            tenants: RwLock::new(HashMap::new()),
            path,
            random: SystemRandom::new(),
        });
        {
            let mut map = t.tenants.write().expect("tenant keys lock");
            for (name, k) in kept.tenants {
                let keys = t.derive_all(&name, &k.keys);
                map.insert(name, TenantKeys { kept: k, keys });
            }
        }
        Ok(t)
    }

    pub fn master_id(&self) -> Option<&str> {
        self.master.as_ref().map(|m| m.id())
    }

    fn derive_all(&self, tenant: &str, keys: &[DataKey]) -> HashMap<u32, DataKeyBytes> {
        let Some(m) = &self.master else {
            return HashMap::new();
        };
        keys.iter()
            .filter(|k| k.master_key_id == m.id())
            .filter_map(|k| {
                let material: [u8; SEAL_KEY_BYTES] =
                    URL_SAFE_NO_PAD.decode(&k.material).ok()?.try_into().ok()?;
                Some((k.id, DataKeyBytes(m.derive(tenant, k.id, &material))))
            })
            .collect()
    }

    /// Takes a tenant's encryption settings and data keys as the control
    /// plane gives them; keeps them on disk when they changed, before they
    /// are used: a key something was sealed with is one a restart finds.
    pub fn set_tenant(
        &self,
        tenant: &str,
        encryption: Option<EncryptionSpec>,
        keys: Vec<DataKey>,
    ) -> Result<(), BrokerError> {
        if keys.len() > TENANT_KEYS_MAX {
            return Err(BrokerError::Keys(format!(
                "tenant {tenant} has {} data keys, above the {TENANT_KEYS_MAX} a broker holds",
                keys.len()
            )));
        }
        let kept = KeptTenant { encryption, keys };
        let gone = kept.encryption.is_none() && kept.keys.is_empty();
        let mut map = self.tenants.write().expect("tenant keys lock");
        if map.get(tenant).is_some_and(|t| t.kept == kept) || (gone && !map.contains_key(tenant)) {
            return Ok(());
        }
        if !gone && map.len() >= TENANTS_MAX && !map.contains_key(tenant) {
            return Err(BrokerError::Keys(format!(
                "data keys of {TENANTS_MAX} tenants held already"
            )));
        }
        if let (Some(e), Some(m)) = (&kept.encryption, &self.master) {
            if e.key_id != m.id() {
                tracing::warn!(tenant, wants = %e.key_id, holds = m.id(), "the tenant's master key is not this broker's: its writes are refused");
            }
        }
        let mut all: BTreeMap<String, KeptTenant> =
            map.iter().map(|(k, v)| (k.clone(), v.kept.clone())).collect();
        if gone {
            all.remove(tenant);
        } else {
            all.insert(tenant.to_owned(), kept.clone());
        }
        self.keep(all)?;
        if gone {
            map.remove(tenant);
        } else {
            let keys = self.derive_all(tenant, &kept.keys);
            map.insert(tenant.to_owned(), TenantKeys { kept, keys });
        }
        Ok(())
    }

    /// Forgets a deleted tenant's keys, on disk too: what is left of its
    /// data no longer opens here.
    pub fn forget_tenant(&self, tenant: &str) -> Result<(), BrokerError> {
        self.set_tenant(tenant, None, Vec::new())
    }

    /// Forgets the keys of every tenant not in `live` (a feed snapshot's).
    pub fn retain(&self, live: &BTreeSet<String>) -> Result<(), BrokerError> {
        let gone: Vec<String> = {
            let map = self.tenants.read().expect("tenant keys lock");
            map.keys().filter(|t| !live.contains(*t)).cloned().collect()
        };
        for t in gone {
            self.forget_tenant(&t)?;
        }
        Ok(())
    }

    /// Writes the kept keys: a temporary file, fsynced, renamed over the
    /// old one, the directory fsynced. Without a master key nothing is
    /// derived, so nothing is kept: a start with one hears the keys from
    /// the feed again.
    fn keep(&self, tenants: BTreeMap<String, KeptTenant>) -> Result<(), BrokerError> {
        let Some(m) = &self.master else {
            return Ok(());
        };
        let kept = Kept {
            master_key_id: m.id().to_owned(),
            master_check: m.check(),
            tenants,
        };
        let bytes = serde_json::to_vec(&kept).map_err(|e| BrokerError::Keys(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        crate::config::write_private(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The keyring of `tenant`'s shards.
    pub fn ring(self: &Arc<Self>, tenant: &str, shard: u64) -> Arc<dyn Keyring> {
        Arc::new(TenantRing {
            tenants: self.clone(),
            tenant: tenant.to_owned(),
            shard,
            derived: Mutex::new(HashMap::new()),
        })
    }

    /// Why a tenant's key is not held, for an error a user reads.
    pub fn why_missing(&self, tenant: &str, key_id: u32) -> String {
        let map = self.tenants.read().expect("tenant keys lock");
        let named = map
            .get(tenant)
            .and_then(|t| t.kept.keys.iter().find(|k| k.id == key_id))
            .map(|k| k.master_key_id.clone());
        match (named, &self.master) {
            (None, _) => format!("tenant {tenant}'s data key {key_id} is not known here (deleted, or not fed yet)"),
            (Some(want), None) => format!(
                "tenant {tenant}'s data key {key_id} is derived under master key {want:?}, and this broker has no master key: set [encryption] master_key_file"
            ),
            (Some(want), Some(m)) => format!(
                "tenant {tenant}'s data key {key_id} is derived under master key {want:?}, and this broker holds {:?}",
                m.id()
            ),
        }
    }
}

/// One tenant's view of [`Tenants`]: a shard opens only its own tenant's
/// batches.
#[derive(Debug)]
struct TenantRing {
    tenants: Arc<Tenants>,
    tenant: String,
    shard: u64,
    /// Shard keys derived so far, by data key id (a few: the tenant's keys
    /// still in this shard's segments).
    derived: Mutex<HashMap<u32, SealKey>>,
}

impl Keyring for TenantRing {
    fn key(&self, key_id: u32) -> Option<SealKey> {
        let data_key = {
            let map = self.tenants.tenants.read().expect("tenant keys lock");
            map.get(&self.tenant)?.keys.get(&key_id).cloned()
        };
        let mut derived = self.derived.lock().expect("derived keys lock");
        let Some(data_key) = data_key else {
            // Forgotten (a deleted tenant): so is its shard key.
            derived.remove(&key_id);
            return None;
        };
        if derived.len() >= TENANT_KEYS_MAX {
            derived.clear();
        }
        Some(
            derived
                .entry(key_id)
                .or_insert_with(|| data_key.for_shard(self.shard))
                .clone(),
        )
    }

    fn current(&self) -> Option<u32> {
        let now = (self.tenants.clock)();
        let map = self.tenants.tenants.read().expect("tenant keys lock");
        map.get(&self.tenant)?.current(now)
    }

    fn nonce(&self) -> [u8; SEAL_NONCE_BYTES] {
        let mut n = [0u8; SEAL_NONCE_BYTES];
        // A repeated nonce under one key would undo GCM's secrecy: no
        // fallback to anything but the system's random source.
        self.tenants
            .random
            .fill(&mut n)
            .expect("the system's random source failed");
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_000_000;

    fn clock() -> crate::clock::Clock {
        Arc::new(|| NOW_MS)
    }

    fn master(id: &str) -> Arc<dyn MasterKey> {
        Arc::new(FileMasterKey::parse(&FileMasterKey::generate(id).unwrap()).unwrap())
    }

    fn key(id: u32, master: &str, byte: u8) -> DataKey {
        DataKey {
            id,
            master_key_id: master.into(),
            material: URL_SAFE_NO_PAD.encode([byte; 32]),
            created_ms: 0,
        }
    }

    fn on(m: &str) -> Option<EncryptionSpec> {
        Some(EncryptionSpec {
            key_id: m.into(),
            rotation_period_ms: 0,
        })
    }

    #[test]
    fn keys_differ_by_tenant_id_and_master_and_agree_across_brokers() {
        let a = FileMasterKey::parse(&FileMasterKey::generate("m").unwrap()).unwrap();
        let b = FileMasterKey::parse(&FileMasterKey::generate("m").unwrap()).unwrap();
        let mat = [3u8; 32];
        let k = a.derive("t", 1, &mat);
        assert_eq!(
            k,
            a.derive("t", 1, &mat),
            "deterministic: every broker derives alike"
        );
        assert_ne!(k, a.derive("u", 1, &mat));
        assert_ne!(k, a.derive("t", 2, &mat));
        assert_ne!(k, a.derive("t", 1, &[4u8; 32]));
        assert_ne!(k, b.derive("t", 1, &mat), "another master key, another data key");
        assert_ne!(a.check(), b.check());
        // Tenant names cannot be shifted into the id bytes.
        assert_ne!(a.derive("t\u{1}", 0, &mat), a.derive("t", 1, &mat));
    }

    #[test]
    fn a_bad_master_key_file_is_refused_with_why() {
        for (text, why) in [
            ("", "no key line"),
            ("felix-master-key m", "expected"),
            ("felix-master-key m AAAA", "32 bytes"),
            ("felix-master-key bad/id AAAA", "id"),
            ("other m AAAA", "expected"),
        ] {
            let e = FileMasterKey::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn kept_keys_need_the_same_master_key_and_a_deleted_tenant_is_gone_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let m = master("m1");
        let t = Tenants::open(dir.path(), Some(m.clone()), clock()).unwrap();
        t.set_tenant("acme", on("m1"), vec![key(1, "m1", 7), key(4, "m1", 8)])
            .unwrap();
        let ring = t.ring("acme", 1);
        assert_eq!(ring.current(), Some(4));
        assert!(ring.key(1).is_some() && ring.key(4).is_some());
        assert!(t.ring("other", 1).key(1).is_none(), "a tenant's keys are its own");
        drop((t, ring));

        // The same key opens them again; another, or none, refuses to start.
        let t = Tenants::open(dir.path(), Some(m.clone()), clock()).unwrap();
        assert!(t.ring("acme", 1).key(4).is_some());
        let e = Tenants::open(dir.path(), Some(master("m1")), clock())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not the one"), "{e}");
        let e = Tenants::open(dir.path(), None, clock()).unwrap_err().to_string();
        assert!(e.contains("no master key is configured"), "{e}");

        // Encryption off: old keys still open, nothing new is sealed.
        t.set_tenant("acme", None, vec![key(1, "m1", 7), key(4, "m1", 8)])
            .unwrap();
        assert_eq!(t.ring("acme", 1).current(), None);
        assert!(t.ring("acme", 1).key(4).is_some());

        let material = URL_SAFE_NO_PAD.encode([8u8; 32]);
        assert!(std::fs::read_to_string(dir.path().join(KEYS_FILE))
            .unwrap()
            .contains(&material));
        t.retain(&BTreeSet::new()).unwrap();
        assert!(t.ring("acme", 1).key(4).is_none());
        let file = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
        assert!(
            !file.contains(&material),
            "the material is gone from disk: {file}"
        );
        // With no tenant's keys kept, any master key (or none) starts.
        Tenants::open(dir.path(), None, clock()).unwrap();
    }

    #[test]
    fn a_new_key_seals_only_once_every_replica_has_had_time_to_hear_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenants::open(dir.path(), Some(master("m1")), clock()).unwrap();
        let mut young = key(2, "m1", 2);
        young.created_ms = (NOW_MS - KEY_ACTIVATION_MS + 1) as u64;
        t.set_tenant("acme", on("m1"), vec![key(1, "m1", 1), young.clone()])
            .unwrap();
        let ring = t.ring("acme", 1);
        assert_eq!(
            ring.current(),
            Some(1),
            "the older key seals until the new one is due"
        );
        assert!(ring.key(2).is_some(), "the new key opens at once");
        t.set_tenant("acme", on("m1"), vec![young]).unwrap();
        assert_eq!(
            t.ring("acme", 1).current(),
            None,
            "turned on just now: in the clear until then"
        );
    }

    #[test]
    fn without_a_master_key_nothing_is_kept_and_a_later_master_key_starts() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenants::open(dir.path(), None, clock()).unwrap();
        t.set_tenant("acme", on("m1"), vec![key(1, "m1", 1)]).unwrap();
        assert!(t.ring("acme", 1).key(1).is_none());
        assert!(!dir.path().join(KEYS_FILE).exists());
        Tenants::open(dir.path(), Some(master("m1")), clock()).unwrap();
    }

    #[test]
    fn each_shard_seals_under_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenants::open(dir.path(), Some(master("m1")), clock()).unwrap();
        t.set_tenant("acme", on("m1"), vec![key(1, "m1", 1)]).unwrap();
        let plain = felix_testkit::Batch::of(&[b"v"]).bytes();
        let (one, two) = (t.ring("acme", 1), t.ring("acme", 2));
        let sealed = felix_log::batch::seal::seal_current(&plain, one.as_ref())
            .unwrap()
            .unwrap();
        let b = felix_log::Batch::new(bytes::Bytes::from(sealed)).unwrap();
        assert!(felix_log::batch::seal::open(&b, one.as_ref()).is_ok());
        assert_eq!(
            felix_log::batch::seal::open(&b, two.as_ref()).unwrap_err(),
            felix_log::BatchError::Unseal(1),
            "another shard's key does not open it"
        );
        // Forgotten, the shard's derived key goes too.
        t.forget_tenant("acme").unwrap();
        assert!(felix_log::batch::seal::open(&b, one.as_ref()).is_err());
    }

    #[test]
    fn a_key_under_another_master_is_not_derived_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenants::open(dir.path(), Some(master("m1")), clock()).unwrap();
        t.set_tenant("acme", on("m2"), vec![key(9, "m2", 1)]).unwrap();
        let ring = t.ring("acme", 1);
        assert_eq!(ring.current(), Some(9));
        assert!(ring.key(9).is_none());
        assert!(t.why_missing("acme", 9).contains("\"m2\""));
    }
}
