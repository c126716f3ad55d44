//! Control records: the cursor and consumer-group changes that travel through
//! the shard's log (and so through Raft) as control batches, so that every
//! replica, and an index rebuilt from the segments, derives the same cursor
//! and group state. One op per record value; the record's timestamp is the
//! time the leader accepted it, which is the `now` the op is applied with.
//! Byte layout in `docs/format/index.md` ("Control records").

use bytes::Bytes;
use felix_log::{BatchBuilder, Compression, Offset, RecordInput};

use crate::encoding::NAME_BYTES_MAX;
use crate::error::{IndexError, Result};
use crate::group::ConsumerId;

/// Offsets one group op may name.
pub const GROUP_OFFSETS_PER_OP_MAX: usize = 4096;

pub const OP_CURSOR_COMMIT: u8 = 1;
pub const OP_GROUP_LEASE: u8 = 2;
pub const OP_GROUP_ACK: u8 = 3;
pub const OP_GROUP_NACK: u8 = 4;
pub const OP_GROUP_EXTEND: u8 = 5;
/// Op bytes from here up belong to other layers (Raft membership…); the
/// index skips them.
pub const OP_FOREIGN_MIN: u8 = 0x80;

/// One control operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// A named subscription's committed position (the next offset to read).
    CursorCommit {
        name: Bytes,
        offset: Offset,
    },
    /// Hand `offsets` to `consumer` until `until_ms`.
    GroupLease {
        group: Bytes,
        consumer: ConsumerId,
        until_ms: i64,
        offsets: Vec<Offset>,
    },
    GroupAck {
        group: Bytes,
        offsets: Vec<Offset>,
    },
    /// Give leased offsets back, to be redelivered from `redeliver_at_ms`.
    GroupNack {
        group: Bytes,
        consumer: ConsumerId,
        redeliver_at_ms: i64,
        offsets: Vec<Offset>,
    },
    GroupExtend {
        group: Bytes,
        consumer: ConsumerId,
        until_ms: i64,
        offsets: Vec<Offset>,
    },
    /// An op of another layer, carried in the same log.
    Foreign(u8),
}

fn bad(reason: impl Into<String>) -> IndexError {
    IndexError::Control(reason.into())
}

fn check_name(n: &[u8]) -> Result<()> {
    if n.len() > NAME_BYTES_MAX {
        return Err(IndexError::NameTooLong {
            len: n.len(),
            max: NAME_BYTES_MAX,
        });
    }
    Ok(())
}

impl ControlOp {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let name = |out: &mut Vec<u8>, n: &[u8]| -> Result<()> {
            check_name(n)?;
            out.push(n.len() as u8);
            out.extend_from_slice(n);
            Ok(())
        };
        let offsets = |out: &mut Vec<u8>, o: &[Offset]| -> Result<()> {
            if o.len() > GROUP_OFFSETS_PER_OP_MAX {
                return Err(bad(format!(
                    "{} offsets in one op, above {GROUP_OFFSETS_PER_OP_MAX}",
                    o.len()
                )));
            }
            out.extend_from_slice(&(o.len() as u16).to_be_bytes());
            for x in o {
                out.extend_from_slice(&x.0.to_be_bytes());
            }
            Ok(())
        };
        match self {
            ControlOp::CursorCommit { name: n, offset } => {
                out.push(OP_CURSOR_COMMIT);
                name(&mut out, n)?;
                out.extend_from_slice(&offset.0.to_be_bytes());
            }
            ControlOp::GroupLease {
                group,
                consumer,
                until_ms: t,
                offsets: o,
            }
            | ControlOp::GroupNack {
                group,
                consumer,
                redeliver_at_ms: t,
                offsets: o,
            }
            | ControlOp::GroupExtend {
                group,
                consumer,
                until_ms: t,
                offsets: o,
            } => {
                out.push(match self {
                    ControlOp::GroupLease { .. } => OP_GROUP_LEASE,
                    ControlOp::GroupNack { .. } => OP_GROUP_NACK,
                    _ => OP_GROUP_EXTEND,
                });
                name(&mut out, group)?;
                out.extend_from_slice(&consumer.0.to_be_bytes());
                out.extend_from_slice(&t.to_be_bytes());
                offsets(&mut out, o)?;
            }
            ControlOp::GroupAck { group, offsets: o } => {
                out.push(OP_GROUP_ACK);
                name(&mut out, group)?;
                offsets(&mut out, o)?;
            }
            ControlOp::Foreign(op) => {
                return Err(bad(format!("op {op:#04x} belongs to another layer")));
            }
        }
        Ok(out)
    }

    /// Decodes one op, checking every length before use.
    pub fn decode(b: &Bytes) -> Result<ControlOp> {
        let mut r = Reader { b, pos: 0 };
        let op = r.u8()?;
        if op >= OP_FOREIGN_MIN {
            return Ok(ControlOp::Foreign(op));
        }
        let out = match op {
            OP_CURSOR_COMMIT => ControlOp::CursorCommit {
                name: r.name()?,
                offset: Offset(r.u64()?),
            },
            OP_GROUP_LEASE | OP_GROUP_NACK | OP_GROUP_EXTEND => {
                let group = r.name()?;
                let consumer = ConsumerId(r.u64()?);
                let t = r.u64()? as i64;
                let offsets = r.offsets()?;
                match op {
                    OP_GROUP_LEASE => ControlOp::GroupLease {
                        group,
                        consumer,
                        until_ms: t,
                        offsets,
                    },
                    OP_GROUP_NACK => ControlOp::GroupNack {
                        group,
                        consumer,
                        redeliver_at_ms: t,
                        offsets,
                    },
                    _ => ControlOp::GroupExtend {
                        group,
                        consumer,
                        until_ms: t,
                        offsets,
                    },
                }
            }
            OP_GROUP_ACK => ControlOp::GroupAck {
                group: r.name()?,
                offsets: r.offsets()?,
            },
            other => return Err(bad(format!("unknown control op {other:#04x}"))),
        };
        if r.pos != b.len() {
            return Err(bad("bytes after the end of the op"));
        }
        Ok(out)
    }
}

struct Reader<'a> {
    b: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() - self.pos < n {
            return Err(bad("op truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn name(&mut self) -> Result<Bytes> {
        let n = self.u8()? as usize;
        let start = self.pos;
        self.take(n)?;
        Ok(self.b.slice(start..start + n))
    }
    fn offsets(&mut self) -> Result<Vec<Offset>> {
        let n = self.u16()? as usize;
        if n > GROUP_OFFSETS_PER_OP_MAX {
            return Err(bad(format!(
                "{n} offsets in one op, above {GROUP_OFFSETS_PER_OP_MAX}"
            )));
        }
        // Checked against the bytes present before allocating.
        if self.b.len() - self.pos < n * 8 {
            return Err(bad("op truncated"));
        }
        (0..n).map(|_| self.u64().map(Offset)).collect()
    }
}

/// A control batch carrying `ops`, accepted by the leader at `now_ms`.
pub fn control_batch(ops: &[ControlOp], now_ms: i64) -> Result<Vec<u8>> {
    let mut b = BatchBuilder::new(felix_log::batch::layout::BATCH_BYTES_MAX).control();
    for op in ops {
        let v = op.encode()?;
        b.push(RecordInput {
            value: Some(&v),
            timestamp_ms: now_ms,
            ..RecordInput::default()
        })?;
    }
    Ok(b.build(Compression::None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_truncations_are_refused() {
        let ops = [
            ControlOp::CursorCommit {
                name: Bytes::from_static(b"sub-a"),
                offset: Offset(77),
            },
            ControlOp::GroupLease {
                group: Bytes::from_static(b"g"),
                consumer: ConsumerId(3),
                until_ms: 1_000,
                offsets: vec![Offset(1), Offset(2)],
            },
            ControlOp::GroupAck {
                group: Bytes::from_static(b"g"),
                offsets: vec![Offset(2)],
            },
            ControlOp::GroupNack {
                group: Bytes::from_static(b"g"),
                consumer: ConsumerId(3),
                redeliver_at_ms: -5,
                offsets: vec![],
            },
            ControlOp::GroupExtend {
                group: Bytes::from_static(b""),
                consumer: ConsumerId(u64::MAX),
                until_ms: i64::MAX,
                offsets: vec![Offset(u64::MAX)],
            },
        ];
        for op in ops {
            let enc = Bytes::from(op.encode().unwrap());
            assert_eq!(ControlOp::decode(&enc).unwrap(), op);
            for cut in 0..enc.len() {
                assert!(
                    ControlOp::decode(&enc.slice(..cut)).is_err(),
                    "{op:?} cut at {cut}"
                );
            }
            let mut long = enc.to_vec();
            long.push(0);
            assert!(ControlOp::decode(&Bytes::from(long)).is_err());
        }
        assert_eq!(
            ControlOp::decode(&Bytes::from_static(&[0x90, 1, 2])).unwrap(),
            ControlOp::Foreign(0x90)
        );
        assert!(ControlOp::decode(&Bytes::from_static(&[0x40])).is_err());
    }

    #[test]
    fn limits_are_enforced_on_encode() {
        let long = ControlOp::CursorCommit {
            name: Bytes::from(vec![b'x'; NAME_BYTES_MAX + 1]),
            offset: Offset(0),
        };
        assert!(matches!(long.encode(), Err(IndexError::NameTooLong { .. })));
        let many = ControlOp::GroupAck {
            group: Bytes::new(),
            offsets: vec![Offset(0); GROUP_OFFSETS_PER_OP_MAX + 1],
        };
        assert!(many.encode().is_err());
    }
}
