//! The cluster as Redis cluster clients see it: which door holds which hash
//! slots (`CLUSTER SLOTS`, `SHARDS`, `NODES`, `INFO`). Sans-IO: built from
//! a cache's key routing and its shard leaders' doors.
//!
//! Under `slots` routing shard `i` of `n` holds one range of slots
//! (`felix_model::routing::shard_slots`), so the table names, per range,
//! the door of the broker that leads the shard: a cluster client then sends
//! a key straight to its leader. A shard whose leader is not known, or has
//! no door, is given to the door asked, which forwards. A cache routed by
//! FNV-1a maps no slot to a shard: the door asked holds every slot.

use bytes::Bytes;
use felix_model::routing::{fnv1a64, shard_slots, SLOTS};
use felix_model::KeyRouting;

use crate::codec::Reply;

/// One door (a broker's Redis listener) as cluster clients name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    /// `host:port`, as advertised.
    pub addr: String,
    pub myself: bool,
}

impl Door {
    fn host(&self) -> &str {
        match self.addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => &self.addr,
        }
    }

    fn port(&self) -> i64 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// A cluster node id (40 hex digits), the same for one address on
    /// every door, so a client sees one node under one id.
    pub fn id(&self) -> String {
        node_id(&self.addr)
    }
}

/// Which door holds which slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    /// Ascending, covering every slot once: (first, last, index in `doors`).
    pub ranges: Vec<(u16, u16, usize)>,
    pub doors: Vec<Door>,
}

impl SlotTable {
    /// The door at `me` holding every slot.
    pub fn single(me: &str) -> SlotTable {
        SlotTable {
            ranges: vec![(0, SLOTS - 1, 0)],
            doors: vec![Door {
                addr: me.to_owned(),
                myself: true,
            }],
        }
    }

    /// A cache's table: `leaders[i]` is the door of shard `i`'s leader, if
    /// known. Adjacent ranges of one door are merged.
    pub fn of_cache(me: &str, routing: KeyRouting, leaders: &[Option<String>]) -> SlotTable {
        if routing != KeyRouting::Slots || leaders.is_empty() {
            return SlotTable::single(me);
        }
        let mut t = SlotTable::single(me);
        t.ranges.clear();
        let n = leaders.len() as u32;
        for (shard, door) in leaders.iter().enumerate() {
            let Some((a, b)) = shard_slots(shard as u32, n) else {
                continue;
            };
            let addr = door.as_deref().unwrap_or(me);
            let d = match t.doors.iter().position(|d| d.addr == addr) {
                Some(d) => d,
                None => {
                    t.doors.push(Door {
                        addr: addr.to_owned(),
                        myself: false,
                    });
                    t.doors.len() - 1
                }
            };
            match t.ranges.last_mut() {
                Some(last) if last.2 == d && u32::from(last.1) + 1 == u32::from(a) => last.1 = b,
                _ => t.ranges.push((a, b, d)),
            }
        }
        t
    }

    /// `CLUSTER SLOTS`: per range, its first and last slot and its node.
    pub fn slots(&self) -> Reply {
        Reply::Array(
            self.ranges
                .iter()
                .map(|(a, b, d)| {
                    let door = &self.doors[*d];
                    Reply::Array(vec![
                        Reply::Int(i64::from(*a)),
                        Reply::Int(i64::from(*b)),
                        Reply::Array(vec![
                            Reply::text(door.host()),
                            Reply::Int(door.port()),
                            Reply::text(&door.id()),
                        ]),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER SHARDS`: per door, its slot ranges (as a flat list of
    /// bounds) and itself as the one node.
    pub fn shards(&self) -> Reply {
        Reply::Array(
            self.doors
                .iter()
                .enumerate()
                .filter(|(i, _)| self.ranges.iter().any(|r| r.2 == *i))
                .map(|(i, door)| {
                    let bounds = self
                        .ranges
                        .iter()
                        .filter(|r| r.2 == i)
                        .flat_map(|(a, b, _)| [Reply::Int(i64::from(*a)), Reply::Int(i64::from(*b))])
                        .collect();
                    let node = Reply::Map(vec![
                        (Reply::text("id"), Reply::text(&door.id())),
                        (Reply::text("port"), Reply::Int(door.port())),
                        (Reply::text("ip"), Reply::text(door.host())),
                        (Reply::text("endpoint"), Reply::text(door.host())),
                        (Reply::text("role"), Reply::text("master")),
                        (Reply::text("replication-offset"), Reply::Int(0)),
                        (Reply::text("health"), Reply::text("online")),
                    ]);
                    Reply::Map(vec![
                        (Reply::text("slots"), Reply::Array(bounds)),
                        (Reply::text("nodes"), Reply::Array(vec![node])),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER NODES`: one line per door.
    pub fn nodes(&self) -> Reply {
        let mut out = String::new();
        for (i, door) in self.doors.iter().enumerate() {
            let flags = if door.myself { "myself,master" } else { "master" };
            out.push_str(&format!(
                "{} {}:{}@0 {flags} - 0 0 1 connected",
                door.id(),
                door.host(),
                door.port()
            ));
            for (a, b, _) in self.ranges.iter().filter(|r| r.2 == i) {
                if a == b {
                    out.push_str(&format!(" {a}"));
                } else {
                    out.push_str(&format!(" {a}-{b}"));
                }
            }
            out.push('\n');
        }
        Reply::Bulk(Bytes::from(out))
    }

    /// `CLUSTER INFO`: every slot is served (a door forwards what it does
    /// not lead).
    pub fn info(&self) -> Reply {
        let n = self.doors.len();
        Reply::Bulk(Bytes::from(format!(
            "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:{SLOTS}\r\ncluster_slots_ok:{SLOTS}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{n}\r\ncluster_size:{n}\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n"
        )))
    }
}

/// A cluster node id (40 hex digits), stable for one advertised address.
pub fn node_id(advertise: &str) -> String {
    let a = fnv1a64(advertise.as_bytes());
    let b = fnv1a64(format!("{advertise}#node").as_bytes());
    format!("{a:016x}{b:016x}{:08x}", (a ^ b) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers_every_slot_once(t: &SlotTable) {
        let mut next = 0u32;
        for (a, b, d) in &t.ranges {
            assert_eq!(u32::from(*a), next, "{t:?}");
            assert!(a <= b && *d < t.doors.len());
            next = u32::from(*b) + 1;
        }
        assert_eq!(next, u32::from(SLOTS));
    }

    #[test]
    fn a_slots_cache_names_each_shards_leader_and_merges_one_doors_neighbours() {
        let leaders = [
            Some("10.0.0.2:6379".to_owned()),
            Some("10.0.0.2:6379".to_owned()),
            None,
            Some("10.0.0.3:6379".to_owned()),
        ];
        let t = SlotTable::of_cache("10.0.0.1:6379", KeyRouting::Slots, &leaders);
        covers_every_slot_once(&t);
        // Shards 0 and 1 are one door's: one range; shard 2's leader is not
        // known, so the door asked holds it and forwards.
        assert_eq!(t.ranges, vec![(0, 8191, 1), (8192, 12287, 0), (12288, 16383, 2)]);
        assert!(t.doors[0].myself && !t.doors[1].myself);
        let Reply::Array(slots) = t.slots() else { panic!() };
        assert_eq!(
            slots[0],
            Reply::Array(vec![
                Reply::Int(0),
                Reply::Int(8191),
                Reply::Array(vec![
                    Reply::text("10.0.0.2"),
                    Reply::Int(6379),
                    Reply::text(&node_id("10.0.0.2:6379"))
                ])
            ])
        );
        let Reply::Bulk(nodes) = t.nodes() else { panic!() };
        let nodes = String::from_utf8(nodes.to_vec()).unwrap();
        assert_eq!(nodes.lines().count(), 3, "{nodes}");
        assert!(
            nodes.contains("10.0.0.1:6379@0 myself,master - 0 0 1 connected 8192-12287\n"),
            "{nodes}"
        );
        let Reply::Array(shards) = t.shards() else {
            panic!()
        };
        assert_eq!(shards.len(), 3);
    }

    #[test]
    fn an_fnv_cache_or_an_unknown_one_is_one_door_holding_every_slot() {
        let leaders = [Some("10.0.0.2:6379".to_owned())];
        for t in [
            SlotTable::of_cache("[::1]:7000", KeyRouting::Fnv1a, &leaders),
            SlotTable::of_cache("[::1]:7000", KeyRouting::Slots, &[]),
        ] {
            covers_every_slot_once(&t);
            assert_eq!(t, SlotTable::single("[::1]:7000"));
            assert_eq!(t.doors[0].host(), "::1");
            assert_eq!(t.doors[0].port(), 7000);
        }
        // The same address has the same id on every door.
        assert_eq!(node_id("a:1"), node_id("a:1"));
        assert_ne!(node_id("a:1"), node_id("a:2"));
        assert_eq!(node_id("a:1").len(), 40);
    }
}
