//! The vote file: a group's vote, overwritten in place.
//!
//! A vote is saved on every election a replica takes part in. Writing it
//! to a temporary file and renaming it over the old one cost two fsyncs
//! and a new inode per save; with a thousand groups electing at once that
//! inode churn was most of the brokers' CPU on ext4 (`recently_deleted`
//! while allocating inodes). The file is made once per group, at its
//! final size, and each save overwrites one of its two slots and syncs
//! the data, so a torn write can only spoil the slot being written: the
//! other still holds the vote before it. Format: `docs/format/vote.md`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The file in a group's state directory.
pub const VOTE_FILE: &str = "raft-vote";
/// What this replaced (a JSON vote, renamed into place); read when
/// [`VOTE_FILE`] does not exist yet, from a replica written before.
pub const LEGACY_VOTE_FILE: &str = "raft-vote.json";

const MAGIC: [u8; 4] = *b"FXVT";
const VERSION: u8 = 1;
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + MAGIC.len();
const SEQ_AT: usize = VERSION_AT + 4;
const LEN_AT: usize = SEQ_AT + 8;
const BODY_AT: usize = LEN_AT + 4;
/// Bytes of one slot.
pub const SLOT_BYTES: usize = 256;
const CRC_AT: usize = SLOT_BYTES - 4;
/// The longest encoded vote a slot holds.
pub const VOTE_BYTES_MAX: usize = CRC_AT - BODY_AT;
/// Bytes of the file: two slots.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;
const _: () = assert!(BODY_AT == 20 && VOTE_BYTES_MAX >= 200);

/// One slot's bytes for save number `seq` of vote `body`.
pub fn encode(seq: u64, body: &[u8]) -> io::Result<[u8; SLOT_BYTES]> {
    if body.len() > VOTE_BYTES_MAX {
        return Err(io::Error::other(format!(
            "an encoded vote of {} bytes is longer than a slot's {VOTE_BYTES_MAX}",
            body.len()
        )));
    }
    let mut s = [0u8; SLOT_BYTES];
    s[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
    s[VERSION_AT] = VERSION;
    s[SEQ_AT..LEN_AT].copy_from_slice(&seq.to_le_bytes());
    s[LEN_AT..BODY_AT].copy_from_slice(&(body.len() as u32).to_le_bytes());
    s[BODY_AT..BODY_AT + body.len()].copy_from_slice(body);
    let crc = crc32fast::hash(&s[..CRC_AT]);
    s[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    Ok(s)
}

/// A slot's save number and vote, if the slot is whole.
pub fn decode(s: &[u8]) -> Option<(u64, &[u8])> {
    if s.len() != SLOT_BYTES || s[MAGIC_AT..VERSION_AT] != MAGIC || s[VERSION_AT] != VERSION {
        return None;
    }
    let crc = u32::from_le_bytes(s[CRC_AT..].try_into().ok()?);
    if crc32fast::hash(&s[..CRC_AT]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(s[SEQ_AT..LEN_AT].try_into().ok()?);
    let len = u32::from_le_bytes(s[LEN_AT..BODY_AT].try_into().ok()?) as usize;
    (len <= VOTE_BYTES_MAX).then(|| (seq, &s[BODY_AT..BODY_AT + len]))
}

/// The newest whole slot of a vote file's bytes: its save number and vote.
pub fn newest(file: &[u8]) -> Option<(u64, &[u8])> {
    file.chunks_exact(SLOT_BYTES)
        .take(2)
        .filter_map(decode)
        .max_by_key(|(seq, _)| *seq)
}

/// A group's vote file, ready for saves. It holds no descriptor between
/// saves: a broker with 10,000 groups would otherwise hold 10,000 more.
#[derive(Debug)]
pub struct VoteFile {
    dir: std::path::PathBuf,
    /// The last save's number (0: none yet).
    seq: u64,
    /// Whether the file's full size and name are on disk: the first save
    /// syncs them too.
    made: bool,
}

impl VoteFile {
    /// Reads where the vote file in `dir` stands; the group's first save
    /// makes it.
    pub fn open(dir: &Path) -> io::Result<VoteFile> {
        let path = dir.join(VOTE_FILE);
        let (seq, made) = match File::open(&path) {
            Ok(file) => (slots(&file, &path)?.map_or(0, |(seq, _)| seq), true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, false),
            Err(e) => return Err(e),
        };
        Ok(VoteFile {
            dir: dir.to_path_buf(),
            seq,
            made,
        })
    }

    /// Saves `body` durably over the older slot.
    pub fn save(&mut self, body: &[u8]) -> io::Result<()> {
        let seq = self.seq + 1;
        let slot = encode(seq, body)?;
        let at = (seq % 2) * SLOT_BYTES as u64;
        let file = File::options()
            .write(true)
            .create(!self.made)
            .open(self.dir.join(VOTE_FILE))?;
        file.write_all_at(&slot, at)?;
        if self.made {
            // The file's size never changes after the first save, so its
            // data is all a save needs on disk.
            file.sync_data()?;
        } else {
            // The first save (slot 1) gives the file its full size: that
            // and its name must reach the disk with it.
            file.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
            self.made = true;
        }
        self.seq = seq;
        Ok(())
    }
}

/// The vote saved in `dir` (from the legacy file if the group has no
/// [`VOTE_FILE`] yet), if any.
pub fn read(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    let path = dir.join(VOTE_FILE);
    match File::open(&path) {
        Ok(file) => Ok(slots(&file, &path)?.map(|(_, v)| v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::read(dir.join(LEGACY_VOTE_FILE)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The newest save in vote file `file`: its number and vote. Two spoilt
/// slots are an error: a vote was saved there and is lost. (One save
/// spoils at most the slot it writes, and the first goes beside an empty
/// one.)
fn slots(file: &File, path: &Path) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut b = vec![0u8; FILE_BYTES];
    let n = read_up_to(file, &mut b)?;
    match newest(&b[..n]) {
        Some((seq, vote)) => Ok(Some((seq, vote.to_vec()))),
        // No save finished yet: a torn first save (the only one that can
        // leave the file short, or a slot of zeros) never returned, so it
        // promised nothing.
        None if n < FILE_BYTES || b.chunks(SLOT_BYTES).any(|s| s.iter().all(|x| *x == 0)) => Ok(None),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: neither vote slot is whole", path.display()),
        )),
    }
}

fn read_up_to(f: &File, b: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < b.len() {
        match f.read_at(&mut b[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_slot_wins() {
        let mut f = vec![0u8; FILE_BYTES];
        assert_eq!(newest(&f), None);
        f[SLOT_BYTES..].copy_from_slice(&encode(1, b"one").unwrap());
        assert_eq!(newest(&f), Some((1, &b"one"[..])));
        f[..SLOT_BYTES].copy_from_slice(&encode(2, b"two").unwrap());
        assert_eq!(newest(&f), Some((2, &b"two"[..])));
        // A torn second write spoils only its own slot.
        f[BODY_AT] ^= 0xff;
        assert_eq!(newest(&f), Some((1, &b"one"[..])));
        // A short file (a crash while it was first made cannot leave one,
        // but a copy can) keeps whatever slot is whole.
        assert_eq!(newest(&f[..SLOT_BYTES + 10]), None);
    }

    #[test]
    fn a_vote_longer_than_a_slot_is_refused() {
        assert!(encode(1, &[b'x'; VOTE_BYTES_MAX]).is_ok());
        assert!(encode(1, &[b'x'; VOTE_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn saves_alternate_slots_and_survive_a_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut vf = VoteFile::open(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        vf.save(b"term 1").unwrap();
        vf.save(b"term 2").unwrap();
        drop(vf);
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"term 2"[..]));
        let mut vf = VoteFile::open(dir.path()).unwrap();
        vf.save(b"term 3").unwrap();
        drop(vf);
        let path = dir.path().join(VOTE_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_BYTES as u64);
        // Tear the newest slot (save 3 went to slot 1).
        let mut b = std::fs::read(&path).unwrap();
        b[SLOT_BYTES + CRC_AT] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"term 2"[..]));
        // Both torn: an error, not a replica that forgot its vote.
        b[CRC_AT] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert!(read(dir.path()).is_err());
        assert!(VoteFile::open(dir.path()).is_err());
    }

    #[test]
    fn a_file_whose_first_save_tore_holds_no_vote() {
        let dir = tempfile::tempdir().unwrap();
        // Made, and torn before any of the first save reached it.
        let path = dir.path().join(VOTE_FILE);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        // Torn with part of the first save (slot 1) written.
        let mut b = vec![0u8; SLOT_BYTES + 40];
        b[SLOT_BYTES..].copy_from_slice(&encode(1, b"half").unwrap()[..40]);
        std::fs::write(&path, &b).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut vf = VoteFile::open(dir.path()).unwrap();
        vf.save(b"whole").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"whole"[..]));
    }

    #[test]
    fn a_legacy_json_vote_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEGACY_VOTE_FILE), b"{\"old\":1}").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"{\"old\":1}"[..]));
        // The next save goes to the new file, which is read from then on.
        VoteFile::open(dir.path()).unwrap().save(b"{\"new\":2}").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"{\"new\":2}"[..]));
    }
}
