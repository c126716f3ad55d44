//! Broker identities on the replication transport: a process holding one
//! broker's certificate cannot speak for another broker, and a certificate
//! from another CA is not let in at all, nor one of another region. The
//! attacker here is a raw QUIC client writing RPC heads by hand
//! (`docs/format/raft-rpc.md`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use felix_client::transport::{self, dev_certificates, IssuedCertificate, TransportConfig};
use felix_log::{Durability, LogConfig, RaftIndex, SharedLog};
use felix_replication::network::RAFT_ALPN;
use felix_replication::{node_id, Applier, BrokerNode, GroupConfig, GroupId, Replica, Router, Transport};

const KIND_JOIN: u8 = 7;
const KIND_GROUPS: u8 = 9;
const KIND_LANE: u8 = 13;
const GROUP: GroupId = GroupId(11);
/// Broker 3's region.
const REGION: &str = "eu";

struct Nothing;
impl Applier for Nothing {
    fn apply_through(&self, _: RaftIndex) -> Result<(), String> {
        Ok(())
    }
    fn installed(&self, _: RaftIndex, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Broker 3, leading a one-replica group.
async fn broker3(root: &std::path::Path, cert: &IssuedCertificate) -> (Arc<Transport>, Replica) {
    let me = node_id(3, 1);
    let router = Router::default();
    let t = Transport::start(
        me,
        REGION,
        "127.0.0.1:0".parse().unwrap(),
        &cert.server_tls().unwrap(),
        &cert.client_tls().unwrap(),
        router.clone(),
    )
    .unwrap();
    let cfg = LogConfig {
        durability: Durability::Always,
        segment_bytes: 2 << 20,
        batch_bytes_max: 1 << 20,
        ..LogConfig::default()
    };
    let (log, _) = SharedLog::open(root.join("b3/log"), cfg).unwrap();
    let replica = Replica::start(
        me,
        GROUP,
        Arc::new(log),
        root.join("b3/raft"),
        Arc::new(Nothing),
        None,
        t.clone(),
        &router,
        GroupConfig::default(),
    )
    .await
    .unwrap();
    let node = BrokerNode {
        raft_addr: t.local_addr().unwrap().to_string(),
        client_addr: String::new(),
    };
    replica.initialize(BTreeMap::from([(me, node)])).await.unwrap();
    assert!(
        replica.led_within(Duration::from_secs(20)).await,
        "broker 3 never led its group"
    );
    (t, replica)
}

/// One RPC over a fresh connection presenting `cert`, dialling the server
/// as a broker of [`REGION`] does: the reply's status and text, or the
/// connection's error.
async fn rpc(
    to: std::net::SocketAddr,
    cert: &IssuedCertificate,
    kind: u8,
    from: u64,
    body: &[u8],
) -> Result<(u8, String), String> {
    rpc_in(REGION, to, cert, kind, from, body).await
}

/// A connection presenting `cert`, dialling the server as a broker of
/// `region` does.
async fn connect(
    region: &str,
    to: std::net::SocketAddr,
    cert: &IssuedCertificate,
) -> Result<quinn::Connection, String> {
    let ep = transport::client_endpoint(
        &cert.client_tls().unwrap(),
        RAFT_ALPN,
        &TransportConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    ep.connect(to, &transport::identity::region_name(region))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

async fn rpc_in(
    region: &str,
    to: std::net::SocketAddr,
    cert: &IssuedCertificate,
    kind: u8,
    from: u64,
    body: &[u8],
) -> Result<(u8, String), String> {
    let conn = connect(region, to, cert).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut req = head(kind, from, body.len());
    req.extend_from_slice(body);
    send.write_all(&req).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let reply = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
    if reply.len() < 5 {
        return Err(format!("a reply of {} bytes", reply.len()));
    }
    Ok((reply[0], String::from_utf8_lossy(&reply[5..]).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_speaks_only_for_the_broker_it_names_and_another_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = dev_certificates(&tmp.path().join("ca"), &[]).unwrap();
    let c2 = ca.issue_broker(2, REGION, &tmp.path().join("c2")).unwrap();
    let c3 = ca.issue_broker(3, REGION, &tmp.path().join("c3")).unwrap();
    let (t3, replica) = broker3(tmp.path(), &c3).await;
    let addr = t3.local_addr().unwrap();
    let voters_before = replica.voters();

    // Broker 2's certificate, used by another process, asks to join broker
    // 3's group as broker 3 (a new incarnation of it): refused, by the
    // certificate check.
    let impostor = node_id(3, 9);
    let node = BrokerNode {
        raft_addr: "127.0.0.1:9".into(),
        client_addr: String::new(),
    };
    let join = bincode::serialize(&(impostor, &node)).unwrap();
    let (status, text) = rpc(addr, &c2, KIND_JOIN, impostor, &join).await.unwrap();
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("does not name broker-3.felix"), "{text}");

    // ... and as itself, asking to admit broker 3's node: refused, by the
    // body's claim.
    let (status, text) = rpc(addr, &c2, KIND_JOIN, node_id(2, 1), &join).await.unwrap();
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("asked to admit node"), "{text}");

    // The same certificate speaking for its own broker is served: the
    // refusals above are about identity, not about broker 2.
    let ask = bincode::serialize(&vec![GROUP]).unwrap();
    let (status, text) = rpc(addr, &c2, KIND_GROUPS, node_id(2, 1), &ask).await.unwrap();
    assert_eq!(status, 0, "{text}");

    // Nothing of the group changed.
    assert_eq!(replica.voters(), voters_before);
    let learners = replica
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .learner_ids()
        .count();
    assert_eq!(learners, 0, "a refused join left a learner behind");

    // A certificate from another CA, even one naming broker 3, never gets
    // past the handshake.
    let other = dev_certificates(&tmp.path().join("other-ca"), &[]).unwrap();
    let rogue = other.issue_broker(3, REGION, &tmp.path().join("rogue")).unwrap();
    let r = rpc(addr, &rogue, KIND_GROUPS, node_id(3, 1), &ask).await;
    assert!(r.is_err(), "a certificate of another CA was served: {r:?}");

    // A broker cannot even start as broker 3 with broker 2's certificate.
    let e = Transport::start(
        node_id(3, 2),
        REGION,
        "127.0.0.1:0".parse().unwrap(),
        &c2.server_tls().unwrap(),
        &c2.client_tls().unwrap(),
        Router::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("broker-3.felix"), "{e}");

    // The generic development certificate (`client.pem`), which names no
    // broker and no region, never gets past the handshake either.
    let generic = IssuedCertificate {
        cert: ca.client_cert.clone(),
        key: ca.client_key.clone(),
        ca: ca.ca.clone(),
    };
    for from in [node_id(1, 1), node_id(2, 1), node_id(3, 1)] {
        let r = rpc(addr, &generic, KIND_GROUPS, from, &ask).await;
        assert!(r.is_err(), "a certificate of no region was served: {r:?}");
    }
    t3.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_of_another_region_is_refused_in_the_handshake_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    // One CA signs both regions' brokers: the region name alone keeps
    // them apart.
    let ca = dev_certificates(&tmp.path().join("ca"), &[]).unwrap();
    let c3 = ca.issue_broker(3, REGION, &tmp.path().join("c3")).unwrap();
    let us2 = ca.issue_broker(2, "us", &tmp.path().join("us2")).unwrap();
    let eu2 = ca.issue_broker(2, REGION, &tmp.path().join("eu2")).unwrap();
    let (t3, _replica) = broker3(tmp.path(), &c3).await;
    let addr = t3.local_addr().unwrap();
    let ask = bincode::serialize(&vec![GROUP]).unwrap();

    // The same broker id and CA in region eu is served: what follows is
    // about the region alone.
    let (status, text) = rpc(addr, &eu2, KIND_GROUPS, node_id(2, 1), &ask).await.unwrap();
    assert_eq!(status, 0, "{text}");

    // A us broker dialling the eu broker: its certificate does not name
    // eu.region.felix, so the eu side refuses it, whatever name it dials.
    for dialled in [REGION, "us"] {
        let r = rpc_in(dialled, addr, &us2, KIND_GROUPS, node_id(2, 1), &ask).await;
        assert!(r.is_err(), "a us certificate was served by an eu broker: {r:?}");
    }

    // An eu broker dialling a us broker: the us server's certificate does
    // not carry the name the eu broker dials, so the eu side refuses it
    // and sends nothing.
    let us_server = Transport::start(
        node_id(2, 1),
        "us",
        "127.0.0.1:0".parse().unwrap(),
        &us2.server_tls().unwrap(),
        &us2.client_tls().unwrap(),
        Router::default(),
    )
    .unwrap();
    let r = rpc(
        us_server.local_addr().unwrap(),
        &eu2,
        KIND_GROUPS,
        node_id(2, 1),
        &ask,
    )
    .await;
    let e = r.expect_err("an eu broker completed a handshake with a us broker");
    assert!(e.to_string().contains("certificate"), "{e}");

    // A broker configured for eu cannot start with a us certificate.
    let e = Transport::start(
        node_id(2, 1),
        REGION,
        "127.0.0.1:0".parse().unwrap(),
        &us2.server_tls().unwrap(),
        &us2.client_tls().unwrap(),
        Router::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("eu.region.felix"), "{e}");
    us_server.close();
    t3.close();
}

fn head(kind: u8, from: u64, len: usize) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&GROUP.0.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&from.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h
}

/// A lane frame: the RPC's id, its head, its body.
fn frame(id: u64, kind: u8, from: u64, body: &[u8]) -> Vec<u8> {
    let mut f = id.to_le_bytes().to_vec();
    f.extend_from_slice(&head(kind, from, body.len()));
    f.extend_from_slice(body);
    f
}

/// The next reply on a lane: its id, status and text.
async fn lane_reply(recv: &mut quinn::RecvStream) -> Result<(u64, u8, String), String> {
    let mut h = [0u8; 13];
    recv.read_exact(&mut h).await.map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(h[9..13].try_into().unwrap()) as usize;
    let mut b = vec![0u8; len];
    recv.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok((
        u64::from_le_bytes(h[..8].try_into().unwrap()),
        h[8],
        String::from_utf8_lossy(&b).into_owned(),
    ))
}

/// On a lane each RPC is checked as on a stream of its own: the sender it
/// claims must be the broker its connection's certificate names. A frame
/// larger than a lane carries ends the lane, and the connection still
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_speaks_only_for_its_certificates_broker_and_ends_at_an_oversized_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = dev_certificates(&tmp.path().join("ca"), &[]).unwrap();
    let c2 = ca.issue_broker(2, REGION, &tmp.path().join("c2")).unwrap();
    let c3 = ca.issue_broker(3, REGION, &tmp.path().join("c3")).unwrap();
    let (t3, _replica) = broker3(tmp.path(), &c3).await;
    let addr = t3.local_addr().unwrap();
    let ask = bincode::serialize(&vec![GROUP]).unwrap();

    let conn = connect(REGION, addr, &c2).await.unwrap();

    // A lane opened in broker 4's name by broker 2's certificate: refused.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&head(KIND_LANE, node_id(4, 1), 0)).await.unwrap();
    let refusal = recv.read_to_end(1 << 16).await.unwrap();
    assert_eq!(refusal[0], 1, "a lane opened for another broker");

    // A lane request with a body (whose bytes would be read as frames).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut with_body = head(KIND_LANE, node_id(2, 1), 3);
    with_body.extend_from_slice(b"abc");
    send.write_all(&with_body).await.unwrap();
    let refusal = recv.read_to_end(1 << 16).await.unwrap();
    assert_eq!(refusal[0], 1, "a lane opened with a body");

    // Broker 2's lane.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&head(KIND_LANE, node_id(2, 1), 0)).await.unwrap();
    let mut opened = [9u8; 5];
    recv.read_exact(&mut opened).await.unwrap();
    assert_eq!(opened, [0, 0, 0, 0, 0], "the lane was not opened");
    // Two RPCs at once: one as broker 2, one claiming broker 4.
    let mut both = frame(7, KIND_GROUPS, node_id(2, 1), &ask);
    both.extend_from_slice(&frame(8, KIND_GROUPS, node_id(4, 1), &ask));
    send.write_all(&both).await.unwrap();
    let mut replies = [
        lane_reply(&mut recv).await.unwrap(),
        lane_reply(&mut recv).await.unwrap(),
    ];
    replies.sort();
    assert_eq!((replies[0].0, replies[0].1), (7, 0), "{:?}", replies[0]);
    assert_eq!((replies[1].0, replies[1].1), (8, 1), "{:?}", replies[1]);
    assert!(replies[1].2.contains("claims broker 4"), "{}", replies[1].2);

    // A frame announcing more than a lane carries: the lane ends.
    let mut big = 9u64.to_le_bytes().to_vec();
    big.extend_from_slice(&head(
        KIND_GROUPS,
        node_id(2, 1),
        felix_replication::lanes::LANE_BODY_MAX + 1,
    ));
    send.write_all(&big).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), lane_reply(&mut recv))
        .await
        .expect("the lane did not end");
    assert!(ended.is_err(), "an oversized frame was answered: {ended:?}");

    // The connection still serves an RPC on a stream of its own.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut rpc = head(KIND_GROUPS, node_id(2, 1), ask.len());
    rpc.extend_from_slice(&ask);
    send.write_all(&rpc).await.unwrap();
    send.finish().unwrap();
    let mut recv = recv;
    let reply = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(reply[0], 0, "{}", String::from_utf8_lossy(&reply[5..]));
    t3.close();
}
