//! Who the other brokers are and where they listen: the control plane's
//! broker registry as the feed brings it (there is no static list).

use std::collections::BTreeMap;
use std::sync::RwLock;

use felix_replication::{BrokerNode, NodeId};

/// One broker as this broker knows it (kept in the metadata file, so a
/// broker restarted while the control plane is away still knows where its
/// peers are).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub node: BrokerNode,
    /// Its current Raft node id, when the registry says (a broker that
    /// registered without one: any incarnation of it is current).
    pub node_id: Option<NodeId>,
    /// Where its Redis door listens, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_addr: Option<String>,
    /// Where its Kafka door listens, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_addr: Option<String>,
}

/// The brokers of the cluster, this one included.
#[derive(Debug)]
pub struct Peers {
    by_broker: RwLock<BTreeMap<u64, Peer>>,
}

impl Peers {
    /// Filled by the control plane's feed, starting from what it said
    /// last (`saved`); `me` is known from the start.
    pub fn from_registry(me: u64, node: BrokerNode, node_id: NodeId, saved: BTreeMap<u64, Peer>) -> Peers {
        let mut by_broker = saved;
        by_broker.insert(
            me,
            Peer {
                node,
                node_id: Some(node_id),
                redis_addr: None,
                kafka_addr: None,
            },
        );
        Peers {
            by_broker: RwLock::new(by_broker),
        }
    }

    /// Every entry, as saved.
    pub fn records(&self) -> BTreeMap<u64, Peer> {
        self.read().clone()
    }

    pub fn get(&self, broker: u64) -> Option<BrokerNode> {
        self.read().get(&broker).map(|p| p.node.clone())
    }

    /// Where `broker`'s Redis door listens, as it registered.
    pub fn redis_addr(&self, broker: u64) -> Option<String> {
        self.read().get(&broker)?.redis_addr.clone()
    }

    /// Where `broker`'s Kafka door listens, as it registered.
    pub fn kafka_addr(&self, broker: u64) -> Option<String> {
        self.read().get(&broker)?.kafka_addr.clone()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every broker's addresses.
    pub fn all(&self) -> BTreeMap<u64, BrokerNode> {
        self.read().iter().map(|(b, p)| (*b, p.node.clone())).collect()
    }

    /// The current node ids the registry names (none with a static list).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.read().values().filter_map(|p| p.node_id).collect()
    }

    /// Whether `id` is the current incarnation of its broker: the one the
    /// registry names (any, if it names none).
    pub fn is_current(&self, broker: u64, id: NodeId) -> bool {
        match self.read().get(&broker) {
            Some(p) => p.node_id.is_none_or(|n| n == id),
            None => false,
        }
    }

    /// What the registry says of `broker` now (`None`: it left for good).
    /// This broker's own entry keeps the addresses and node id it runs
    /// with, and takes only its door's address from the registry.
    pub fn learn(&self, me: u64, broker: u64, peer: Option<Peer>) {
        let mut map = self.by_broker.write().expect("peers lock");
        match peer {
            Some(p) if broker == me => {
                if let Some(mine) = map.get_mut(&me) {
                    mine.redis_addr = p.redis_addr;
                    mine.kafka_addr = p.kafka_addr;
                }
            }
            None if broker == me => {}
            Some(p) => {
                map.insert(broker, p);
            }
            None => {
                map.remove(&broker);
            }
        }
    }

    /// Replaces every entry but this broker's with a registry snapshot.
    pub fn replace(&self, me: u64, all: BTreeMap<u64, Peer>) {
        let mut map = self.by_broker.write().expect("peers lock");
        map.retain(|b, _| *b == me);
        for (b, p) in all {
            if b != me {
                map.insert(b, p);
            } else if let Some(mine) = map.get_mut(&me) {
                mine.redis_addr = p.redis_addr;
                mine.kafka_addr = p.kafka_addr;
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Peer>> {
        self.by_broker.read().expect("peers lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> BrokerNode {
        BrokerNode {
            raft_addr: format!("127.0.0.1:{port}"),
            client_addr: format!("127.0.0.1:{}", port + 1),
        }
    }

    #[test]
    fn the_registry_replaces_peers_but_never_this_brokers_own_entry() {
        let p = Peers::from_registry(1, node(10), 0x1_0001, BTreeMap::new());
        let theirs = |id: u64| Peer {
            node: node(20),
            node_id: Some(id),
            redis_addr: Some(format!("door-{id:x}:6379")),
            kafka_addr: Some(format!("door-{id:x}:9092")),
        };
        p.replace(1, BTreeMap::from([(1, theirs(0x1_0009)), (2, theirs(0x2_0001))]));
        assert!(p.is_current(1, 0x1_0001) && !p.is_current(1, 0x1_0009));
        assert_eq!(p.get(1), Some(node(10)));
        // Its own doors' addresses are the one thing it takes of its own entry.
        assert_eq!(p.redis_addr(1).as_deref(), Some("door-10009:6379"));
        assert_eq!(p.redis_addr(2).as_deref(), Some("door-20001:6379"));
        assert_eq!(p.kafka_addr(1).as_deref(), Some("door-10009:9092"));
        assert_eq!(p.kafka_addr(2).as_deref(), Some("door-20001:9092"));
        // Broker 2 rebuilt under a new node id: its old replica is not current.
        p.learn(1, 2, Some(theirs(0x2_0002)));
        assert!(!p.is_current(2, 0x2_0001) && p.is_current(2, 0x2_0002));
        let mut ids = p.node_ids();
        ids.sort_unstable();
        assert_eq!(ids, vec![0x1_0001, 0x2_0002]);
        p.learn(1, 2, None);
        p.learn(1, 1, None);
        assert_eq!(p.all().keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_broker_registered_without_a_node_id_takes_any_incarnation() {
        let p = Peers::from_registry(1, node(10), 0x1_0001, BTreeMap::new());
        p.learn(
            1,
            2,
            Some(Peer {
                node: node(20),
                node_id: None,
                redis_addr: None,
                kafka_addr: None,
            }),
        );
        assert!(p.is_current(2, 0xdead) && !p.is_current(3, 1));
        assert_eq!(p.node_ids(), vec![0x1_0001]);
    }
}
