//! Hostile peers against a real node: a test peer that passes authentication and then sends
//! malformed, oversized and out-of-order messages, or floods; peers that skip or fail the
//! handshake. Each must lose its connection (and nothing else) while the node keeps serving.

use crate::history::EpochId;
use std::{sync::Arc, time::Duration};

use iroh::{
    endpoint::{presets, Connection},
    Endpoint, EndpointAddr, RelayMode as IrohRelay, SecretKey,
};
use tokio::sync::mpsc;

use super::{
    auth::SwarmKey,
    conn::{close, handshake},
    ticket,
    wire::{encode_frame, ControlMsg, ALPN},
    Shared,
};
use crate::{sync::DataMsg, RelayMode, Swarm};

const DEADLINE: Duration = Duration::from_secs(20);

async fn node(dir: &std::path::Path) -> Swarm {
    crate::test_node(dir, "hostile", &[]).await
}

/// A raw peer: an iroh endpoint speaking `murmur/1` by hand.
struct Raw {
    ep: Endpoint,
    shared: Arc<Shared>,
}

impl Raw {
    async fn new(key: SwarmKey) -> Raw {
        let secret = SecretKey::generate();
        let ep = Endpoint::builder(presets::Minimal)
            .secret_key(secret.clone())
            .relay_mode(IrohRelay::Disabled)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .unwrap()
            .alpns(vec![ALPN.to_vec()])
            .bind()
            .await
            .unwrap();
        // The channels lead nowhere: the raw peer drives its streams itself.
        let (node_tx, _) = mpsc::channel(1);
        let (replica_tx, _) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            me: *secret.public().as_bytes(),
            swarm_key: key,
            node_tx,
            replica_tx,
            conn_ids: Default::default(),
            closing: Default::default(),
        });
        Raw { ep, shared }
    }

    async fn dial(&self, target: &Swarm) -> (Connection, EndpointAddr) {
        let addr = ticket::parse(&target.ticket()).unwrap();
        let conn = self.ep.connect(addr.clone(), ALPN).await.unwrap();
        (conn, addr)
    }
}

/// Waits for the node to close the connection; returns the application close code.
async fn closed_by_node(conn: &Connection) -> u64 {
    match tokio::time::timeout(DEADLINE, conn.closed()).await {
        Ok(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner(),
        Ok(other) => panic!("connection ended otherwise: {other}"),
        Err(_) => panic!("the node did not close the connection"),
    }
}

async fn still_serves(a: &Swarm, i: usize) {
    let key = format!("alive-{i}");
    a.put(&key, b"yes").await.unwrap();
    assert_eq!(a.get(&key).await.unwrap(), Some(b"yes".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_peer_sending_garbage_is_disconnected_and_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path()).await;
    let raw = Raw::new(SwarmKey::from_name("hostile")).await;
    let a_id = *ticket::parse(&a.ticket()).unwrap().id.as_bytes();

    type Attack = fn() -> (bool, Vec<u8>);

    let attacks: Vec<(&str, Attack)> = vec![
        // First, while the node is still empty: a whole document that does not load (it is
        // loaded on another thread, see `replica::Loading`).
        ("whole document that does not load", || {
            use crate::{doc::KvDoc, sync::PeerSync};
            let mut doc = KvDoc::new(&[7; 32]);
            doc.put("k", &[1; 16], 1).unwrap();
            doc.commit();
            let (mut ours, mut theirs) = (PeerSync::new(None), PeerSync::new(None));
            let mut stand_in = KvDoc::new(&[9; 32]);
            for m in theirs.poll(&mut stand_in, EpochId::ZERO).msgs {
                ours.receive(&mut doc, m).unwrap();
            }
            let polled = ours.poll(&mut doc, EpochId::ZERO);
            assert!(polled.whole);
            let mut b = in_epoch();
            for m in polled.msgs {
                let DataMsg::Sync { part, last, epoch } = m else {
                    unreachable!()
                };
                let mut part = part;
                let at = part.len() / 2;
                part[at] ^= 0x55;
                assert!(last && KvDoc::carries_whole_document(&part));
                b.extend(encode_frame(&DataMsg::Sync { epoch, part, last }));
            }
            (false, b)
        }),
        ("undecodable data frame", || {
            (false, vec![0, 0, 0, 3, 0xFF, 0xFF, 0xFF])
        }),
        ("oversized data frame header", || {
            (false, (64u32 << 20).to_be_bytes().to_vec())
        }),
        ("handshake message after the handshake", || {
            (
                true,
                encode_frame(&ControlMsg::Hello {
                    version: 1,
                    nonce: [0; 32],
                }),
            )
        }),
        // Changes and sync messages are only read from a peer in the same epoch: the attacker
        // announces the node's epoch first.
        ("push of a malformed change", || {
            let mut b = in_epoch();
            b.extend(encode_frame(&DataMsg::Push {
                epoch: EpochId::ZERO,
                changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 9, 9]],
                values: vec![],
            }));
            (false, b)
        }),
        ("sync message of garbage", || {
            let mut b = in_epoch();
            b.extend(encode_frame(&DataMsg::Sync {
                epoch: EpochId::ZERO,
                part: vec![0x42; 100],
                last: true,
            }));
            (false, b)
        }),
        // A well-formed change that automerge 0.12 panics on: the node must drop the batch,
        // reload its document and keep every acknowledged write (checked below).
        ("push of a change automerge panics on", || {
            let mut b = in_epoch();
            b.extend(encode_frame(&DataMsg::Push {
                epoch: EpochId::ZERO,
                changes: vec![crate::doc::a_change_automerge_panics_on()
                    .raw_bytes()
                    .to_vec()],
                values: vec![],
            }));
            (false, b)
        }),
        ("undecodable control frame", || {
            (true, vec![0, 0, 0, 2, 0xEE, 0x01])
        }),
    ];
    let n = attacks.len();
    for (i, (name, attack)) in attacks.into_iter().enumerate() {
        let (conn, _) = raw.dial(&a).await;
        let (mut cs, _cr, mut ds, _dr) = handshake(&raw.shared, &conn, true, &a_id)
            .await
            .unwrap_or_else(|(_, e)| panic!("{name}: handshake failed: {e}"));
        let (on_control, bytes) = attack();
        let stream = if on_control { &mut cs } else { &mut ds };
        stream.write_all(&bytes).await.unwrap();
        let code = closed_by_node(&conn).await;
        assert_eq!(code, close::PROTOCOL.into_inner(), "{name}");
        still_serves(&a, i).await;
    }
    for i in 0..n {
        let key = format!("alive-{i}");
        assert_eq!(
            a.get(&key).await.unwrap(),
            Some(b"yes".to_vec()),
            "{key} was lost"
        );
    }
    // A well-behaved node still joins and replicates.
    let dir_b = tempfile::tempdir().unwrap();
    let b = Swarm::builder()
        .storage_path(dir_b.path())
        .swarm_name("hostile")
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .relay_mode(RelayMode::Disabled)
        .local_discovery(false)
        .bootstrap([a.ticket()])
        .build()
        .await
        .unwrap();
    b.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while b.get("alive-5").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "B never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_authentication_and_wrong_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path()).await;
    a.put("secret", b"s").await.unwrap();

    // Skips the handshake: a peer list as the first message.
    let raw = Raw::new(SwarmKey::from_name("hostile")).await;
    let (conn, addr) = raw.dial(&a).await;
    let (mut cs, _cr) = conn.open_bi().await.unwrap();
    cs.write_all(&encode_frame(&ControlMsg::Peers {
        me: addr,
        known: vec![],
    }))
    .await
    .unwrap();
    assert_eq!(closed_by_node(&conn).await, close::PROTOCOL.into_inner());

    // Wrong key: the handshake fails on both sides; the node closes with AUTH_FAILED.
    let intruder = Raw::new(SwarmKey::from_name("not-the-swarm")).await;
    let a_id = *ticket::parse(&a.ticket()).unwrap().id.as_bytes();
    let (conn, _) = intruder.dial(&a).await;
    match handshake(&intruder.shared, &conn, true, &a_id).await {
        Err((code, _)) => assert_eq!(code, close::AUTH_FAILED),
        Ok(_) => panic!("handshake succeeded with the wrong key"),
    }
    assert!(a.peers().await.iter().all(|p| !p.connected));
    still_serves(&a, 0).await;
    a.shutdown().await.unwrap();
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_throttled_memory_stays_bounded_and_junk_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path()).await;
    let raw = Raw::new(SwarmKey::from_name("hostile")).await;
    let a_id = *ticket::parse(&a.ticket()).unwrap().id.as_bytes();
    let (conn, _) = raw.dial(&a).await;
    let (_cs, _cr, mut ds, _dr) = handshake(&raw.shared, &conn, true, &a_id)
        .await
        .unwrap_or_else(|(_, e)| panic!("handshake failed: {e}"));

    let before = rss_bytes();
    // 40 frames of 4 MiB values that no change references: 160 MiB (5x the read budget) pushed as fast as QUIC
    // lets the peer, while the node keeps taking writes.
    ds.write_all(&in_epoch()).await.unwrap();
    let junk = encode_frame(&DataMsg::Push {
        epoch: EpochId::ZERO,
        changes: vec![],
        values: vec![vec![0xAB; 4 << 20]],
    });
    let flood = tokio::spawn(async move {
        for _ in 0..40 {
            if ds.write_all(&junk).await.is_err() {
                break;
            }
        }
        ds
    });
    let mut i = 0;
    let mut peak = before;
    while !flood.is_finished() {
        still_serves(&a, i).await;
        peak = peak.max(rss_bytes());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ds = flood.await.unwrap();
    // Bounded: the per-peer read budget (32 MiB) plus transport buffers, not 160 MiB.
    let growth = peak.saturating_sub(before);
    eprintln!("RSS growth during the flood: {} MiB", growth >> 20);
    assert!(growth < 96 << 20, "RSS grew by {} MiB", growth >> 20);
    a.shutdown().await.unwrap();
    // Junk values were not written to disk.
    let db = std::fs::metadata(dir.path().join("murmur.sqlite3"))
        .unwrap()
        .len();
    let wal = std::fs::metadata(dir.path().join("murmur.sqlite3-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(db + wal < 8 << 20, "database grew to {} bytes", db + wal);
}

/// The frame that announces the epoch of a fresh node (changes and sync messages are only read
/// from a peer in the same epoch).
fn in_epoch() -> Vec<u8> {
    encode_frame(&DataMsg::Epoch {
        epoch: EpochId::ZERO,
    })
}

/// Snapshot transfer from a hostile peer: a whole document sent to a fresh node, then values
/// it did not ask for. The node keeps the document and the values it references, and keeps
/// none of the others, though they arrive while the document loads (no `Want` was sent for
/// any of them, and they are stored before the document shows which it references).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unasked_values_behind_a_whole_document_are_kept_only_if_referenced() {
    use crate::doc::{value_hash, KvDoc};
    use crate::store::{Durability, Store};
    use crate::sync::PeerSync;

    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path()).await;
    let raw = Raw::new(SwarmKey::from_name("hostile")).await;
    let a_id = *ticket::parse(&a.ticket()).unwrap().id.as_bytes();

    // The attacker's document, and the whole-document sync message it would send to an empty
    // peer (found by syncing with an empty stand-in locally).
    let values: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    let mut doc = KvDoc::new(&raw.shared.me);
    for (i, v) in values.iter().enumerate() {
        doc.put(&format!("k{i}"), &value_hash(v), i as u64 + 1)
            .unwrap();
    }
    doc.commit();
    let mut stand_in = KvDoc::new(&[9; 32]);
    let (mut ours, mut theirs) = (PeerSync::new(None), PeerSync::new(None));
    let mut whole = None;
    for _ in 0..4 {
        let polled = ours.poll(&mut doc, EpochId::ZERO);
        if polled.whole {
            whole = Some(polled.msgs);
            break;
        }
        for m in polled.msgs {
            theirs.receive(&mut stand_in, m).unwrap();
        }
        for m in theirs.poll(&mut stand_in, EpochId::ZERO).msgs {
            ours.receive(&mut doc, m).unwrap();
        }
    }
    let whole = whole.expect("a whole-document message for the empty peer");
    let junk: Vec<Vec<u8>> = (0..3u8).map(|i| vec![0xE0 + i; 100]).collect();

    // The node loads the document on another thread and stores values meanwhile: hold the
    // load until the values (junk included) are in the store, then let it finish.
    let (arrived, release) = crate::replica::load_gate::install(a_id);
    let (conn, _) = raw.dial(&a).await;
    let (_cs, _cr, mut ds, _dr) = handshake(&raw.shared, &conn, true, &a_id)
        .await
        .unwrap_or_else(|(_, e)| panic!("handshake failed: {e}"));
    let mut frames = in_epoch();
    for m in &whole {
        frames.extend(encode_frame(m));
    }
    ds.write_all(&frames).await.unwrap();
    crate::replica::load_gate::arrival(arrived).await;
    // Referenced values and junk, mixed, right behind the document.
    let mut mixed = junk.clone();
    mixed.extend(values.iter().cloned());
    ds.write_all(&encode_frame(&DataMsg::Values { values: mixed }))
        .await
        .unwrap();
    let db_file = dir.path().join("murmur.sqlite3");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let conn = rusqlite::Connection::open_with_flags(
            &db_file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM vals", [], |r| r.get(0))
            .unwrap();
        if stored == (values.len() + junk.len()) as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the values were not stored during the load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.send(()).unwrap();

    let deadline = tokio::time::Instant::now() + DEADLINE;
    for (i, v) in values.iter().enumerate() {
        loop {
            if a.get(&format!("k{i}")).await.unwrap().as_ref() == Some(v) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "k{i} never arrived with its value"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(a.len().await.unwrap(), values.len());
    a.shutdown().await.unwrap();
    drop(conn);

    let store = Store::open(dir.path(), Durability::Full).unwrap();
    for v in &values {
        assert!(store.blob(&value_hash(v)).unwrap().is_some());
    }
    for j in &junk {
        assert!(
            store.blob(&value_hash(j)).unwrap().is_none(),
            "an unreferenced value was stored"
        );
    }
    // What the node stored is a document it can reopen on its own.
    let stored = store.load_doc().unwrap();
    let reloaded = KvDoc::load(
        stored.snapshot.as_deref(),
        &stored.changes,
        &[1; 32],
        &crate::history::EpochId::ZERO,
    )
    .unwrap();
    assert_eq!(reloaded.entries(), doc.entries());
}

/// A node that has begun shutting down completes no connection: a dial that reaches it while
/// it closes fails the handshake, and so does a dial it had started, so that no peer counts a
/// connection (a peer up, then down at once) to a node that is leaving. (A restarting
/// follower's old instance once was such a peer, both ways.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_completes_no_handshake() {
    let key = SwarmKey::from_name("hostile");
    let (dialer, acceptor) = (Raw::new(key.clone()).await, Raw::new(key).await);
    let acceptor_id = *acceptor.ep.id().as_bytes();
    let dialer_id = *dialer.ep.id().as_bytes();
    // (dialer closing, acceptor closing)
    for (dialer_closing, acceptor_closing) in [(false, false), (false, true), (true, false)] {
        let closing = dialer_closing || acceptor_closing;
        dialer
            .shared
            .closing
            .store(dialer_closing, std::sync::atomic::Ordering::SeqCst);
        acceptor
            .shared
            .closing
            .store(acceptor_closing, std::sync::atomic::Ordering::SeqCst);
        let accept = {
            let (ep, shared) = (acceptor.ep.clone(), acceptor.shared.clone());
            tokio::spawn(async move {
                let conn = ep.accept().await.unwrap().await.unwrap();
                let r = handshake(&shared, &conn, false, &dialer_id)
                    .await
                    .map(|_| ());
                (r, conn)
            })
        };
        let conn = dialer.ep.connect(acceptor.ep.addr(), ALPN).await.unwrap();
        let dialed = handshake(&dialer.shared, &conn, true, &acceptor_id).await;
        let (accepted, _acceptor_conn) = accept.await.unwrap();
        if acceptor_closing {
            assert!(dialed.is_err(), "the dialer was welcomed by a closing node");
            assert_eq!(
                accepted.unwrap_err(),
                (close::NORMAL, "shutting down".into())
            );
        } else if closing {
            assert_eq!(dialed.unwrap_err(), (close::NORMAL, "shutting down".into()));
            assert!(accepted.is_err(), "a closing node's dial was completed");
        } else {
            assert!(dialed.is_ok() && accepted.is_ok(), "an open node welcomes");
        }
    }
}
