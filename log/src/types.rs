//! Newtypes for the numbers the log hands out, so an offset is never passed
//! where a Raft index is expected.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// Position of a record in its shard. Dense for data records, never reused,
    /// identical on every replica.
    Offset
);
id_type!(
    /// Index of a Raft log entry; one record batch is one entry.
    RaftIndex
);
id_type!(
    /// Raft term under which an entry was written.
    RaftTerm
);
id_type!(
    /// Producer identity for idempotent publishing.
    ProducerId
);
id_type!(
    /// A shard of a stream or cache: one log, one Raft group. Numbered by the
    /// control plane, unique in the cluster.
    ShardId
);
id_type!(
    /// A segment is identified by the Raft index of its first batch, which is
    /// unique (offsets are not: control batches take no offsets).
    SegmentId
);

impl Offset {
    /// The offset `n` records later.
    pub const fn add(self, n: u64) -> Offset {
        Offset(self.0 + n)
    }
}

impl RaftIndex {
    /// The next entry's index.
    pub const fn next(self) -> RaftIndex {
        RaftIndex(self.0 + 1)
    }
}
