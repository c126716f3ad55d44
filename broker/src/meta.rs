//! Stream metadata on one node: the streams it knows (created by following
//! the control plane's feed, or by its clients on a broker alone),
//! with their shard ids and placement. Each stream is a JSON file of its
//! own (`streams/<first shard id>.json`, shard ids being never reused),
//! and what is not a stream's (the feed version, the shard id counter, the
//! broker registry) is `meta.json`; each is rewritten atomically (write a
//! temporary file, fsync, rename, fsync the directory) when it changes,
//! so following one change writes what that change touched, not every
//! stream the broker knows. Version 1 kept every stream in `meta.json`
//! (each change rewrote them all); it is split into version 2 on open.

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
    /// How keys map to shards; absent in entries made before routings had
    /// a name, which route by FNV-1a (the default).
    #[serde(default)]
    pub key_routing: felix_model::KeyRouting,
    /// In a cluster: the brokers' current Raft node ids when it was
    /// created (the founders of shards whose placement names none).
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
            key_routing: self.key_routing,
        }
    }
}

/// `meta.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// Format version of this file.
    version: u32,
    next_shard_id: u64,
    /// Version 1's streams, read only to move them to their own files.
    #[serde(default, skip_serializing)]
    streams: BTreeMap<String, StreamMeta>,
    /// The newest control-plane feed version applied: an older change
    /// arriving later (a repeat after a retry) is skipped.
    #[serde(default)]
    cp_version: u64,
    /// The control plane's broker registry as last heard (a cluster's
    /// peers, known on restart before the control plane answers).
    #[serde(default)]
    peers: BTreeMap<u64, crate::peers::Peer>,
}

/// `streams/<first shard id>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StreamFile {
    name: String,
    meta: StreamMeta,
}

const FILE_VERSION: u32 = 2;
/// Every stream in `meta.json` itself.
const FILE_VERSION_ONE_FILE: u32 = 1;
const STREAMS_DIR: &str = "streams";

/// The node's stream metadata.
#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    streams_dir: PathBuf,
    file: File,
    /// Every stream, by name (in memory; each also in its own file).
    streams: BTreeMap<String, StreamMeta>,
}

impl MetaStore {
    /// Loads `dir/meta.json` and `dir/streams/`, or starts empty if there
    /// is no `meta.json`; a version 1 file is split first.
    pub fn open(dir: &Path) -> Result<MetaStore, BrokerError> {
        let path = dir.join("meta.json");
        let streams_dir = dir.join(STREAMS_DIR);
        let err = |at: &Path, why: String| BrokerError::Metadata {
            path: at.to_path_buf(),
            why,
        };
        let file = match std::fs::read(&path) {
            Ok(b) => {
                let f: File = serde_json::from_slice(&b).map_err(|e| err(&path, e.to_string()))?;
                if f.version != FILE_VERSION && f.version != FILE_VERSION_ONE_FILE {
                    return Err(err(
                        &path,
                        format!(
                            "version {} (this broker reads {FILE_VERSION_ONE_FILE} and {FILE_VERSION})",
                            f.version
                        ),
                    ));
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File {
                version: FILE_VERSION,
                next_shard_id: 1,
                streams: BTreeMap::new(),
                cp_version: 0,
                peers: BTreeMap::new(),
            },
            Err(e) => return Err(err(&path, e.to_string())),
        };
        std::fs::create_dir_all(&streams_dir).map_err(|e| err(&streams_dir, e.to_string()))?;
        let mut m = MetaStore {
            path,
            streams_dir,
            file,
            streams: BTreeMap::new(),
        };
        if m.file.version == FILE_VERSION_ONE_FILE {
            // Every stream to its own file first, then the header: a crash
            // in between leaves version 1 whole, split again next time.
            m.streams = std::mem::take(&mut m.file.streams);
            for (name, meta) in &m.streams {
                m.save_stream(name, meta)?;
            }
            m.file.version = FILE_VERSION;
            m.save()?;
        } else {
            m.streams = m.read_streams()?;
        }
        // A stream file saved just before a crash may hold ids the saved
        // counter has not passed yet.
        let past = m
            .streams
            .values()
            .flat_map(|s| s.shards.iter())
            .max()
            .map_or(0, |id| id + 1);
        m.file.next_shard_id = m.file.next_shard_id.max(past);
        Ok(m)
    }

    /// Every `streams/*.json`; a damaged one stops the open, naming it.
    fn read_streams(&self) -> Result<BTreeMap<String, StreamMeta>, BrokerError> {
        let err = |at: &Path, why: String| BrokerError::Metadata {
            path: at.to_path_buf(),
            why,
        };
        let mut out = BTreeMap::new();
        let entries =
            std::fs::read_dir(&self.streams_dir).map_err(|e| err(&self.streams_dir, e.to_string()))?;
        for entry in entries {
            let at = entry.map_err(|e| err(&self.streams_dir, e.to_string()))?.path();
            // `*.tmp`: a save a crash cut short, never renamed into place.
            if at.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let b = std::fs::read(&at).map_err(|e| err(&at, e.to_string()))?;
            let f: StreamFile = serde_json::from_slice(&b).map_err(|e| err(&at, e.to_string()))?;
            if at != self.stream_path(&f.meta) {
                return Err(err(&at, format!("holds {}, whose file is another", f.name)));
            }
            if out.insert(f.name.clone(), f.meta).is_some() {
                return Err(err(&at, format!("a second file for {}", f.name)));
            }
        }
        Ok(out)
    }

    /// Where a stream's file is: named by its first shard id, which no
    /// other stream ever holds.
    fn stream_path(&self, meta: &StreamMeta) -> PathBuf {
        let first = meta.shards.first().copied().unwrap_or(0);
        self.streams_dir.join(format!("{first}.json"))
    }

    /// The newest control-plane feed version applied.
    pub fn cp_version(&self) -> u64 {
        self.file.cp_version
    }

    /// Records that feed version `version` is being applied. `false`, and
    /// nothing changes, when a newer version was applied already.
    pub fn note_follow(&mut self, version: u64) -> Result<bool, BrokerError> {
        let fresh = version >= self.file.cp_version;
        self.file.cp_version = self.file.cp_version.max(version);
        self.save()?;
        Ok(fresh)
    }

    /// The registry as last heard.
    pub fn peers(&self) -> BTreeMap<u64, crate::peers::Peer> {
        self.file.peers.clone()
    }

    /// Keeps the registry as heard now; saved only when it changed.
    pub fn set_peers(&mut self, peers: BTreeMap<u64, crate::peers::Peer>) -> Result<(), BrokerError> {
        if self.file.peers == peers {
            return Ok(());
        }
        self.file.peers = peers;
        self.save()
    }

    pub fn streams(&self) -> impl Iterator<Item = (StreamName, &StreamMeta)> {
        self.streams
            .iter()
            .filter_map(|(n, m)| StreamName::parse(n).ok().map(|n| (n, m)))
    }

    pub fn get(&self, name: &StreamName) -> Option<&StreamMeta> {
        self.streams.get(&name.to_string())
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
        if self.streams.len() >= STREAMS_MAX {
            return Err(BrokerError::Invalid(format!(
                "this node holds {STREAMS_MAX} streams already"
            )));
        }
        MetaStore::check(c)?;
        let ids = self.shard_ids(c, &placement)?;
        let founders = placement
            .iter()
            .map(|p| {
                if !p.founders.is_empty() {
                    return p.founders.clone();
                }
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
            shards: ids,
            durability: c.durability,
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            max_deliveries: if c.max_deliveries == 0 {
                MAX_DELIVERIES_DEFAULT
            } else {
                c.max_deliveries
            },
            default_ttl_ms: c.default_ttl_ms,
            key_routing: c.key_routing,
            replicas,
            placement,
            founders,
        };
        // The stream's file, then the counter past its ids (which a
        // reopen also works out from the stream files).
        self.save_stream(&name.to_string(), &meta)?;
        self.streams.insert(name.to_string(), meta.clone());
        self.save()?;
        Ok((name, meta))
    }

    /// The shard ids of a new stream: the control plane's group ids when it
    /// placed every shard (every broker must use the same), else the next
    /// ones this broker allocates. Local ids start
    /// past every id in use, so the two never meet.
    fn shard_ids(
        &mut self,
        c: &StreamConfig,
        placement: &[felix_controlplane::model::ShardPlacement],
    ) -> Result<Vec<u64>, BrokerError> {
        if placement.is_empty() {
            let first = self.file.next_shard_id;
            self.file.next_shard_id += u64::from(c.shards);
            return Ok((first..first + u64::from(c.shards)).collect());
        }
        if placement.len() != c.shards as usize {
            return Err(BrokerError::Invalid(format!(
                "{}: {} shards but {} placed",
                c.name,
                c.shards,
                placement.len()
            )));
        }
        let ids: Vec<u64> = placement.iter().map(|p| p.group).collect();
        for id in &ids {
            let taken = self.streams.iter().find(|(_, m)| m.shards.contains(id));
            if *id == 0 || taken.is_some() {
                return Err(BrokerError::Invalid(format!(
                    "{}: shard id {id} is {} here; this data directory holds shards made before the control plane numbered them, so move it away and let the broker rebuild from its peers",
                    c.name,
                    taken.map_or("reserved".to_string(), |(n, _)| format!("taken by {n}"))
                )));
            }
        }
        let past = ids.iter().max().copied().unwrap_or(0) + 1;
        self.file.next_shard_id = self.file.next_shard_id.max(past);
        Ok(ids)
    }

    pub fn delete(&mut self, name: &StreamName) -> Result<StreamMeta, BrokerError> {
        let key = name.to_string();
        let m = self
            .streams
            .get(&key)
            .ok_or_else(|| BrokerError::UnknownStream(key.clone()))?;
        let at = self.stream_path(m);
        let gone = |e: std::io::Error| BrokerError::Metadata {
            path: at.clone(),
            why: e.to_string(),
        };
        match std::fs::remove_file(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(gone(e)),
        }
        std::fs::File::open(&self.streams_dir)
            .and_then(|d| d.sync_all())
            .map_err(gone)?;
        Ok(self.streams.remove(&key).expect("found above"))
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
        let key = name.to_string();
        let mut m = self
            .streams
            .get(&key)
            .ok_or_else(|| BrokerError::UnknownStream(key.clone()))?
            .clone();
        f(&mut m);
        // Saved before it is kept, so a failed save changes nothing.
        self.save_stream(&key, &m)?;
        self.streams.insert(key, m.clone());
        Ok(m)
    }

    /// `meta.json` (no stream in it).
    fn save(&self) -> Result<(), BrokerError> {
        write_json(&self.path, &self.file)
    }

    fn save_stream(&self, name: &str, meta: &StreamMeta) -> Result<(), BrokerError> {
        let f = StreamFile {
            name: name.to_owned(),
            meta: meta.clone(),
        };
        write_json(&self.stream_path(meta), &f)
    }
}

fn write_json(at: &Path, v: &impl Serialize) -> Result<(), BrokerError> {
    let err = |why: String| BrokerError::Metadata {
        path: at.to_path_buf(),
        why,
    };
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| err(e.to_string()))?;
    felix_replication::store::write_durably(at, &bytes).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use felix_controlplane::model::ShardPlacement;

    use super::*;

    fn placed(group: u64, replicas: &[u32], founders: &[u64]) -> ShardPlacement {
        ShardPlacement {
            group,
            replicas: replicas.to_vec(),
            leaving: Vec::new(),
            leader_pinned: false,
            founders: founders.to_vec(),
        }
    }

    fn config(name: &str, shards: u32) -> StreamConfig {
        StreamConfig::stream(name, shards, Durability::Always)
    }

    /// Brokers applying the feed in any order (a snapshot lists streams by
    /// name, not by creation) agree on shard ids and founders because the
    /// control plane's placement carries them.
    #[test]
    fn a_placed_stream_takes_the_control_planes_group_ids_and_founders() {
        let d = tempfile::tempdir().unwrap();
        let mut m = MetaStore::open(d.path()).unwrap();
        let p = vec![
            placed(41, &[1, 2, 3], &[0x1_01, 0x2_01, 0x3_01]),
            placed(42, &[2, 3, 4], &[]),
        ];
        // Founders not recorded (an older control plane): the current node
        // ids of the placed brokers.
        let id = felix_replication::node_id;
        let current = vec![id(1, 1), id(2, 7), id(3, 1), id(4, 1)];
        let (_, s) = m.create(&config("t/n/a", 2), current, p).unwrap();
        assert_eq!(s.shards, vec![41, 42]);
        assert_eq!(s.founders_of(0), &[0x1_01, 0x2_01, 0x3_01]);
        let mut f = s.founders_of(1).to_vec();
        f.sort_unstable();
        assert_eq!(f, vec![id(2, 7), id(3, 1), id(4, 1)]);
        // A stream without placement (no control plane) gets ids past
        // every id in use, never one the control plane gave.
        let (_, local) = m.create(&config("t/n/b", 1), Vec::new(), Vec::new()).unwrap();
        assert_eq!(local.shards, vec![43]);
        // An id already held here (data from before the control plane
        // numbered shards) is refused with what to do, not reused.
        let e = m
            .create(&config("t/n/c", 1), Vec::new(), vec![placed(43, &[1], &[])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("taken by t/n/b") && e.contains("move it away"), "{e}");
        let e = m
            .create(&config("t/n/d", 2), Vec::new(), vec![placed(50, &[1], &[])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 shards but 1 placed"), "{e}");
        // Nothing was recorded for the refused ones, and it all reloads.
        let again = MetaStore::open(d.path()).unwrap();
        let names: Vec<String> = again.streams().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, vec!["t/n/a", "t/n/b"]);
    }

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn a_change_rewrites_its_own_stream_file_and_a_header_that_does_not_grow() {
        let d = tempfile::tempdir().unwrap();
        let mut m = MetaStore::open(d.path()).unwrap();
        let (a, sa) = m.create(&config("t/n/a", 2), Vec::new(), Vec::new()).unwrap();
        for i in 0..100 {
            m.create(&config(&format!("t/n/s{i}"), 1), Vec::new(), Vec::new())
                .unwrap();
            m.note_follow(i).unwrap();
        }
        // Its counters' digits only: no stream is in it.
        let header_bytes = std::fs::metadata(d.path().join("meta.json")).unwrap().len();
        assert!(header_bytes < 128, "meta.json is {header_bytes} bytes");
        // Every save replaces its file (a new inode): a change to one
        // stream leaves every other stream's file as it was.
        let file_a = d.path().join("streams").join(format!("{}.json", sa.shards[0]));
        let before = inode(&file_a);
        let b = StreamName::parse("t/n/s7").unwrap();
        m.set_retention(&b, Some(1_000), None).unwrap();
        m.delete(&StreamName::parse("t/n/s8").unwrap()).unwrap();
        assert_eq!(inode(&file_a), before);
        let kept = std::fs::read_dir(d.path().join("streams")).unwrap().count();
        assert_eq!(kept, 100, "101 made, one deleted");
        drop(m);
        let m = MetaStore::open(d.path()).unwrap();
        assert_eq!(m.streams().count(), 100);
        assert_eq!(m.get(&b).unwrap().retention_ms, Some(1_000));
        assert_eq!(m.get(&a).unwrap(), &sa);
        assert_eq!(m.cp_version(), 99);
    }

    #[test]
    fn a_one_file_version_1_is_split_and_a_crash_mid_create_or_a_damaged_file_is_handled() {
        let d = tempfile::tempdir().unwrap();
        let mut m = MetaStore::open(d.path()).unwrap();
        let (_, sa) = m.create(&config("t/n/a", 3), Vec::new(), Vec::new()).unwrap();
        let (_, sb) = m.create(&config("t/n/b", 1), Vec::new(), Vec::new()).unwrap();
        drop(m);
        // The same streams as version 1 wrote them: all in meta.json.
        let v1 = serde_json::json!({
            "version": 1,
            "next_shard_id": 5,
            "cp_version": 7,
            "peers": {},
            "streams": { "t/n/a": sa, "t/n/b": sb },
        });
        std::fs::remove_dir_all(d.path().join("streams")).unwrap();
        std::fs::write(d.path().join("meta.json"), serde_json::to_vec(&v1).unwrap()).unwrap();
        let mut m = MetaStore::open(d.path()).unwrap();
        assert_eq!(m.streams().count(), 2);
        assert_eq!(m.cp_version(), 7);
        let header: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("meta.json")).unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        assert!(header.get("streams").is_none(), "{header}");
        assert_eq!(std::fs::read_dir(d.path().join("streams")).unwrap().count(), 2);

        // A stream file saved, the counter not (a crash between the two):
        // the next stream's ids still pass it. A save cut short (`.tmp`)
        // is ignored.
        let (_, sc) = m.create(&config("t/n/c", 2), Vec::new(), Vec::new()).unwrap();
        assert_eq!(sc.shards, vec![5, 6]);
        let mut header = header;
        header["next_shard_id"] = 5.into();
        std::fs::write(d.path().join("meta.json"), serde_json::to_vec(&header).unwrap()).unwrap();
        std::fs::write(d.path().join("streams/99.tmp"), b"{ cut").unwrap();
        drop(m);
        let mut m = MetaStore::open(d.path()).unwrap();
        let (_, sd) = m.create(&config("t/n/d", 1), Vec::new(), Vec::new()).unwrap();
        assert_eq!(sd.shards, vec![7], "never an id a stream holds");
        drop(m);

        // A damaged stream file stops the open and names the file.
        std::fs::write(d.path().join("streams/7.json"), b"{ not json").unwrap();
        let e = MetaStore::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("7.json"), "{e}");
    }
}
