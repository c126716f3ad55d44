//! Stream metadata on one node: the streams it knows (created by following
//! the control plane's feed, or through the metadata group in a cluster),
//! with their shard ids and placement, kept in a JSON file in the data
//! directory (`meta.json`) rewritten atomically (write a temporary file,
//! fsync, rename, fsync the directory) on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use felix_client::wire::StreamConfig;
use felix_log::{Durability, ShardId};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::names::StreamName;

/// Most shards one stream may have.
pub const SHARDS_PER_STREAM_MAX: u32 = 1024;
/// Most streams one node's metadata holds.
pub const STREAMS_MAX: usize = 10_000;
/// Default `max_deliveries` of a stream's consumer groups.
pub const MAX_DELIVERIES_DEFAULT: u32 = 5;

// What kind of log a stream is: the model's, one enum for the wire, this
// file and the control plane.
pub use felix_model::StreamKind;

/// One stream as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub kind: StreamKind,
    /// Global shard ids, by shard number.
    pub shards: Vec<u64>,
    pub durability: Durability,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub max_deliveries: u32,
    pub default_ttl_ms: Option<u64>,
    /// In a cluster: the Raft node ids that founded its shard groups (the
    /// metadata group's voters when it was created). A broker not among
    /// them joins the groups instead of founding them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<u64>,
    /// The control plane's placement of each shard (managed streams):
    /// which brokers its group's voters should be, and its group id there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<felix_controlplane::model::ShardPlacement>,
    /// Per shard, the node ids that founded its group: of `replicas`, those
    /// on the brokers the placement named at creation. Empty (streams
    /// without placement, and those made before hosting followed
    /// placement): `replicas` founded every shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub founders: Vec<Vec<u64>>,
}

impl StreamMeta {
    /// Created by following the control plane, which places every shard
    /// (so its absence from a feed snapshot means it was deleted);
    /// dead-letter streams a broker makes on its own have no placement.
    pub fn managed(&self) -> bool {
        !self.placement.is_empty()
    }

    /// The broker the control plane prefers as shard `shard`'s leader.
    pub fn preferred_leader(&self, shard: usize) -> Option<u64> {
        self.placement
            .get(shard)
            .and_then(|p| p.replicas.first())
            .map(|b| u64::from(*b))
    }

    /// Whether broker `broker` holds a replica of shard `shard`: one the
    /// placement names, or one it is moving away from (which serves until
    /// the move is done). Without a placement every broker holds every
    /// shard.
    pub fn hosts(&self, shard: usize, broker: u64) -> bool {
        match self.placement.get(shard) {
            None => self.placement.is_empty(),
            Some(p) => p
                .replicas
                .iter()
                .chain(&p.leaving)
                .any(|b| u64::from(*b) == broker),
        }
    }

    /// The node ids that founded shard `shard`'s group.
    pub fn founders_of(&self, shard: usize) -> &[u64] {
        self.founders.get(shard).map_or(&self.replicas[..], |f| &f[..])
    }

    /// The brokers placed on shard `shard`, preferred first.
    pub fn placed(&self, shard: usize) -> impl Iterator<Item = u64> + '_ {
        self.placement
            .get(shard)
            .into_iter()
            .flat_map(|p| p.replicas.iter().map(|b| u64::from(*b)))
    }

    pub fn shard_id(&self, shard: u32) -> Option<ShardId> {
        self.shards.get(shard as usize).map(|s| ShardId(*s))
    }

    pub fn config(&self, name: &StreamName) -> StreamConfig {
        StreamConfig {
            name: name.to_string(),
            kind: self.kind,
            shards: self.shards.len() as u32,
            durability: self.durability,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            max_deliveries: self.max_deliveries,
            default_ttl_ms: self.default_ttl_ms,
            replication_factor: self.placement.first().map_or(0, |p| p.replicas.len() as u32),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// Format version of this file.
    version: u32,
    next_shard_id: u64,
    streams: BTreeMap<String, StreamMeta>,
    /// In a cluster: the last metadata-group entry this file reflects.
    #[serde(default)]
    raft_applied: Option<u64>,
    /// The newest control-plane feed version applied: an older change
    /// arriving later (another broker's copy, written late) is skipped.
    #[serde(default)]
    cp_version: u64,
}

const FILE_VERSION: u32 = 1;

/// The node's stream metadata.
#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    file: File,
}

impl MetaStore {
    /// Loads `dir/meta.json`, or starts empty if there is none.
    pub fn open(dir: &Path) -> Result<MetaStore, BrokerError> {
        let path = dir.join("meta.json");
        let err = |why: String| BrokerError::Metadata {
            path: path.clone(),
            why,
        };
        let file = match std::fs::read(&path) {
            Ok(b) => {
                let f: File = serde_json::from_slice(&b).map_err(|e| err(e.to_string()))?;
                if f.version != FILE_VERSION {
                    return Err(err(format!(
                        "version {} (this broker reads {FILE_VERSION})",
                        f.version
                    )));
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File {
                version: FILE_VERSION,
                next_shard_id: 1,
                streams: BTreeMap::new(),
                raft_applied: None,
                cp_version: 0,
            },
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(MetaStore { path, file })
    }

    /// The last metadata-group entry applied (cluster only).
    pub fn raft_applied(&self) -> Option<u64> {
        self.file.raft_applied
    }

    /// Notes that the change about to be made is metadata entry `index`;
    /// the change's save records it with it.
    pub fn set_raft_applied(&mut self, index: u64) {
        self.file.raft_applied = Some(index);
    }

    /// The newest control-plane feed version applied.
    pub fn cp_version(&self) -> u64 {
        self.file.cp_version
    }

    /// Records that feed version `version` is being applied (as metadata
    /// entry `raft_index`, in a cluster). `false`, and nothing changes but
    /// the applied entry, when a newer version was applied already.
    pub fn note_follow(&mut self, version: u64, raft_index: Option<u64>) -> Result<bool, BrokerError> {
        if let Some(i) = raft_index {
            self.file.raft_applied = Some(i);
        }
        let fresh = version >= self.file.cp_version;
        self.file.cp_version = self.file.cp_version.max(version);
        self.save()?;
        Ok(fresh)
    }

    /// The whole file, for a metadata snapshot.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BrokerError> {
        serde_json::to_vec(&self.file).map_err(|e| BrokerError::Metadata {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }

    /// Replaces everything with a snapshot's file.
    pub fn replace(&mut self, bytes: &[u8]) -> Result<(), BrokerError> {
        let f: File = serde_json::from_slice(bytes).map_err(|e| BrokerError::Metadata {
            path: self.path.clone(),
            why: format!("snapshot: {e}"),
        })?;
        self.file = f;
        self.save()
    }

    pub fn streams(&self) -> impl Iterator<Item = (StreamName, &StreamMeta)> {
        self.file
            .streams
            .iter()
            .filter_map(|(n, m)| StreamName::parse(n).ok().map(|n| (n, m)))
    }

    pub fn get(&self, name: &StreamName) -> Option<&StreamMeta> {
        self.file.streams.get(&name.to_string())
    }

    /// What can be checked of a new stream without the metadata.
    /// (Kind and durability are typed: the codec refused any other.)
    pub fn check(c: &StreamConfig) -> Result<(), BrokerError> {
        StreamName::parse(&c.name)?;
        if c.shards == 0 || c.shards > SHARDS_PER_STREAM_MAX {
            return Err(BrokerError::Invalid(format!(
                "shards {}: expected 1 to {SHARDS_PER_STREAM_MAX}",
                c.shards
            )));
        }
        Ok(())
    }

    /// Validates and records a new stream (founded by `replicas`, in a
    /// cluster); returns its metadata.
    pub fn create(
        &mut self,
        c: &StreamConfig,
        replicas: Vec<u64>,
        placement: Vec<felix_controlplane::model::ShardPlacement>,
    ) -> Result<(StreamName, StreamMeta), BrokerError> {
        let name = StreamName::parse(&c.name)?;
        if self.get(&name).is_some() {
            return Err(BrokerError::StreamExists(name.to_string()));
        }
        if self.file.streams.len() >= STREAMS_MAX {
            return Err(BrokerError::Invalid(format!(
                "this node holds {STREAMS_MAX} streams already"
            )));
        }
        MetaStore::check(c)?;
        let first = self.file.next_shard_id;
        let founders = placement
            .iter()
            .map(|p| {
                replicas
                    .iter()
                    .copied()
                    .filter(|id| {
                        p.replicas
                            .iter()
                            .any(|b| u64::from(*b) == felix_replication::broker_of(*id))
                    })
                    .collect()
            })
            .collect();
        let meta = StreamMeta {
            kind: c.kind,
            shards: (first..first + u64::from(c.shards)).collect(),
            durability: c.durability,
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            max_deliveries: if c.max_deliveries == 0 {
                MAX_DELIVERIES_DEFAULT
            } else {
                c.max_deliveries
            },
            default_ttl_ms: c.default_ttl_ms,
            replicas,
            placement,
            founders,
        };
        self.file.next_shard_id += u64::from(c.shards);
        self.file.streams.insert(name.to_string(), meta.clone());
        self.save()?;
        Ok((name, meta))
    }

    pub fn delete(&mut self, name: &StreamName) -> Result<StreamMeta, BrokerError> {
        let m = self
            .file
            .streams
            .remove(&name.to_string())
            .ok_or_else(|| BrokerError::UnknownStream(name.to_string()))?;
        self.save()?;
        Ok(m)
    }

    pub fn set_retention(
        &mut self,
        name: &StreamName,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<StreamMeta, BrokerError> {
        self.update(name, |m| {
            m.retention_ms = retention_ms;
            m.retention_bytes = retention_bytes;
        })
    }

    /// Changes what may change of a stream in place (retention, delivery
    /// limit, default TTL), and saves.
    pub fn update(
        &mut self,
        name: &StreamName,
        f: impl FnOnce(&mut StreamMeta),
    ) -> Result<StreamMeta, BrokerError> {
        let m = self
            .file
            .streams
            .get_mut(&name.to_string())
            .ok_or_else(|| BrokerError::UnknownStream(name.to_string()))?;
        f(m);
        let m = m.clone();
        self.save()?;
        Ok(m)
    }

    fn save(&self) -> Result<(), BrokerError> {
        let bytes = serde_json::to_vec_pretty(&self.file).map_err(|e| BrokerError::Metadata {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        felix_replication::store::write_durably(&self.path, &bytes).map_err(|e| BrokerError::Metadata {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }
}
