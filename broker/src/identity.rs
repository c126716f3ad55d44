//! Who a clustered broker's data directory is in Raft: its broker id and
//! the incarnation of the directory (`identity.json`,
//! `docs/format/identity.md`).
//!
//! A broker that lost its disk has lost its votes and every entry it
//! acknowledged. Coming back under its old Raft id, it could vote twice in
//! a term or complete a quorum for entries it no longer holds. So a new
//! directory draws a new incarnation, and the Raft node id
//! ([`felix_replication::node_id`]) changes with it: the peers admit it as a
//! new replica and drop the old one.

use std::path::Path;

use felix_replication::NodeId;
use serde::{Deserialize, Serialize};

use felix_replication::store::write_durably;

use crate::error::BrokerError;

pub const IDENTITY_FILE: &str = "identity.json";
/// Where a broker keeps its shard replicas, each with its Raft state in
/// `raft/`: that state without an identity file means the identity was
/// lost (its votes cannot be honoured under another node id).
pub const SHARDS_DIR: &str = "shards";
const FILE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    broker_id: u32,
    incarnation: u32,
}

/// This broker's identity in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub broker_id: u32,
    pub incarnation: u32,
    /// Drawn just now: the directory held no cluster state.
    pub new: bool,
}

impl Identity {
    pub fn node_id(&self) -> NodeId {
        felix_replication::node_id(self.broker_id, self.incarnation)
    }

    /// Reads `data_dir`'s identity, or draws one for a directory with no
    /// cluster state. Refuses a directory that belongs to another broker,
    /// and one with cluster state but no identity (its votes cannot be
    /// trusted under any id but the one that is lost).
    pub fn load_or_create(data_dir: &Path, broker_id: u64) -> Result<Identity, BrokerError> {
        let path = data_dir.join(IDENTITY_FILE);
        let err = |why: String| BrokerError::Metadata {
            path: path.clone(),
            why,
        };
        let broker_id = u32::try_from(broker_id).map_err(|_| {
            err(format!(
                "broker_id {broker_id} is above {} in a cluster",
                u32::MAX
            ))
        })?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                if f.version != FILE_VERSION {
                    return Err(err(format!(
                        "version {} (this Felix reads {FILE_VERSION})",
                        f.version
                    )));
                }
                if f.broker_id != broker_id {
                    return Err(err(format!(
                        "this data directory belongs to broker {}, but the configuration says broker_id = {broker_id}",
                        f.broker_id
                    )));
                }
                if f.incarnation == 0 {
                    return Err(err("incarnation 0 is never drawn".into()));
                }
                Ok(Identity {
                    broker_id,
                    incarnation: f.incarnation,
                    new: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if holds_raft_state(data_dir) {
                    return Err(err(
                        "missing, but the directory holds cluster state: move the directory away to rebuild this broker from its peers under a new identity"
                            .into(),
                    ));
                }
                std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
                let f = File {
                    version: FILE_VERSION,
                    broker_id,
                    incarnation: draw_incarnation(),
                };
                let bytes = serde_json::to_vec_pretty(&f).map_err(|e| err(e.to_string()))?;
                write_durably(&path, &bytes).map_err(|e| err(e.to_string()))?;
                tracing::info!(
                    broker_id,
                    incarnation = f.incarnation,
                    "new identity for an empty data directory"
                );
                Ok(Identity {
                    broker_id,
                    incarnation: f.incarnation,
                    new: true,
                })
            }
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// A random non-zero incarnation. Uniqueness is what matters (a broker's
/// earlier incarnations are gone with its disk, so they cannot be
/// consulted): 32 random bits make a repeat across a broker's rebuilds
/// vanishingly unlikely.
fn draw_incarnation() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        let v = h.finish() as u32;
        if v != 0 {
            return v;
        }
    }
}

/// Whether any shard replica under `data_dir` has Raft state.
fn holds_raft_state(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join(SHARDS_DIR))
        .map(|dirs| dirs.flatten().any(|d| d.path().join("raft").exists()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_drawn_once_kept_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path(), 3).unwrap();
        assert!(a.new);
        assert_eq!(felix_replication::broker_of(a.node_id()), 3);
        let b = Identity::load_or_create(d.path(), 3).unwrap();
        assert_eq!((b.incarnation, b.new), (a.incarnation, false));
        let wrong = Identity::load_or_create(d.path(), 4).unwrap_err().to_string();
        assert!(wrong.contains("belongs to broker 3"), "{wrong}");
    }

    #[test]
    fn an_emptied_directory_gets_a_new_incarnation() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path(), 1).unwrap();
        std::fs::remove_file(d.path().join(IDENTITY_FILE)).unwrap();
        let b = Identity::load_or_create(d.path(), 1).unwrap();
        assert!(b.new);
        assert_ne!(a.node_id(), b.node_id());
    }

    #[test]
    fn cluster_state_without_an_identity_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(SHARDS_DIR).join("7/raft")).unwrap();
        let e = Identity::load_or_create(d.path(), 1).unwrap_err().to_string();
        assert!(e.contains("move the directory away"), "{e}");
    }
}
