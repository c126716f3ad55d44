//! Entry points shared by the cargo-fuzz targets in `fuzz/` and by the test
//! that replays their corpora, so CI exercises exactly what the fuzzers do.
//! Each panics only when an invariant breaks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::batch::Batch;
use crate::config::LogConfig;
use crate::error::LogError;
use crate::log::Log;
use crate::scan::{self, ScanEnd, ScanFrom, Summary};
use crate::segment::format::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::types::{Offset, RaftIndex};

/// Decodes arbitrary bytes as a batch; whatever decodes must re-validate and
/// its records must stay inside it.
pub fn batch_decode(data: &[u8]) {
    let Ok(b) = Batch::new(Bytes::copy_from_slice(data)) else {
        return;
    };
    let valid = b.validate().is_ok();
    let mut n = 0;
    if let Ok(records) = b.records() {
        for r in records {
            match r {
                Ok(r) => {
                    assert!(r.offset >= b.header().base_offset);
                    n += 1;
                }
                Err(_) => break,
            }
        }
    }
    if valid {
        assert_eq!(
            n,
            b.header().record_count,
            "a valid batch yields its record count"
        );
    }
}

/// Scans arbitrary bytes as a segment body, then opens them as a real log
/// directory: recovery either succeeds with a readable log or reports
/// corruption; it never panics or reads out of bounds.
pub fn segment_recovery(data: &[u8]) {
    let r = scan::scan(
        data,
        ScanFrom {
            pos: 0,
            summary: Summary::empty(Offset(0)),
            min_raft_index: RaftIndex(0),
            verify_records: true,
        },
        |_, _| {},
    );
    assert!(r.valid_end <= data.len());
    if let ScanEnd::Corrupt { end, .. } = r.end {
        assert!(end > r.valid_end && end <= data.len());
    }

    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "felix-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let header = SegmentHeader {
        first_offset: Offset(0),
        first_raft_index: RaftIndex(0),
        created_ms: 0,
        preallocated_bytes: 0,
        generation: 0,
        prev_term: None,
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(data);
    let path: PathBuf = dir.join(format::file_name(Offset(0), RaftIndex(0)));
    std::fs::write(&path, &file).expect("write segment");
    let cfg = LogConfig {
        segment_bytes: (SEGMENT_HEADER_BYTES + data.len()).max(256 << 10) as u64,
        batch_bytes_max: 128 << 10,
        ..LogConfig::default()
    };
    for repair in [false, true] {
        match Log::open(
            &dir,
            LogConfig {
                repair,
                ..cfg.clone()
            },
            0,
        ) {
            Ok((log, _)) => {
                let n = log
                    .batches_from(log.earliest_offset())
                    .expect("from earliest")
                    .count();
                assert!(n as u64 <= (data.len() / crate::batch::layout::HEADER_BYTES) as u64);
                drop(log);
            }
            Err(LogError::Corrupt { .. }) => assert!(!repair, "repair must not fail on corruption"),
            Err(e) => panic!("recovery failed unexpectedly: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
