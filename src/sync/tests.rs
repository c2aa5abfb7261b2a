//! Deterministic tests of replication: replicas exchange messages through a simulated network
//! that delivers in order per link (like a QUIC stream), drops pushes, and breaks connections.

use std::collections::VecDeque;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;
use crate::doc::{value_hash, KvDoc};

struct Node {
    doc: KvDoc,
    /// One PeerSync per other node (None while disconnected).
    links: Vec<Option<PeerSync>>,
    /// Sync states persisted at disconnect.
    saved: Vec<Option<Vec<u8>>>,
}

struct Net {
    nodes: Vec<Node>,
    /// In-flight messages per directed link (from, to).
    queues: Vec<Vec<VecDeque<DataMsg>>>,
    rng: StdRng,
    /// Stands in for the replicas' clocks: every write gets the next stamp.
    clock: u64,
}

impl Net {
    fn new(n: usize, seed: u64) -> Net {
        let nodes = (0..n)
            .map(|i| Node {
                doc: KvDoc::new(&[i as u8 + 1; 32]),
                links: (0..n).map(|_| None).collect(),
                saved: vec![None; n],
            })
            .collect();
        Net {
            nodes,
            queues: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            rng: StdRng::seed_from_u64(seed),
            clock: 0,
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let saved = self.nodes[x].saved[y].clone();
            self.nodes[x].links[y] = Some(PeerSync::new(saved.as_deref()));
        }
        for (x, y) in [(a, b), (b, a)] {
            let node = &mut self.nodes[x];
            let msgs = node.links[y]
                .as_mut()
                .unwrap()
                .poll(&mut node.doc, EpochId::ZERO)
                .msgs;
            self.queues[x][y].extend(msgs);
        }
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(l) = self.nodes[x].links[y].take() {
                self.nodes[x].saved[y] = Some(l.persisted());
            }
            self.queues[x][y].clear();
        }
    }

    fn put(&mut self, n: usize, key: &str, value: &[u8], push_loss: f64) {
        self.clock += 1;
        let node = &mut self.nodes[n];
        node.doc.put(key, &value_hash(value), self.clock).unwrap();
        let change = node.doc.commit().unwrap();
        for peer in 0..self.queues.len() {
            if self.nodes[n].links[peer].is_some() && !self.rng.random_bool(push_loss) {
                self.queues[n][peer].push_back(DataMsg::Push {
                    epoch: EpochId::ZERO,
                    changes: vec![change.raw_bytes().to_vec()],
                    values: vec![value.to_vec()],
                });
            }
        }
    }

    fn delete(&mut self, n: usize, key: &str) {
        self.clock += 1;
        let node = &mut self.nodes[n];
        node.doc.delete(key, self.clock).unwrap();
        if let Some(change) = node.doc.commit() {
            for peer in 0..self.queues.len() {
                if self.nodes[n].links[peer].is_some() {
                    self.queues[n][peer].push_back(DataMsg::Push {
                        epoch: EpochId::ZERO,
                        changes: vec![change.raw_bytes().to_vec()],
                        values: vec![],
                    });
                }
            }
        }
    }

    /// Delivers one message on a random non-empty link. Returns false when all are empty.
    fn step(&mut self) -> bool {
        let n = self.nodes.len();
        let busy: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (0..n).map(move |b| (a, b)))
            .filter(|&(a, b)| !self.queues[a][b].is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let (from, to) = busy[self.rng.random_range(0..busy.len())];
        let msg = self.queues[from][to].pop_front().unwrap();
        let node = &mut self.nodes[to];
        let Some(link) = node.links[from].as_mut() else {
            return true;
        };
        let r = link.receive(&mut node.doc, msg).expect("valid message");
        // Reply to sync messages, and recover from gaps after pushes (as the replica does).
        let reply = match r {
            Received::Synced { .. } => true,
            Received::Pushed { .. } => node.doc.has_missing_deps(),
            _ => false,
        };
        if reply {
            let msgs = link.poll(&mut node.doc, EpochId::ZERO).msgs;
            self.queues[to][from].extend(msgs);
        }
        true
    }

    /// Anti-entropy: every connected pair polls its sync state.
    fn tick(&mut self) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                let node = &mut self.nodes[a];
                if let Some(l) = node.links[b].as_mut() {
                    let msgs = l.poll(&mut node.doc, EpochId::ZERO).msgs;
                    self.queues[a][b].extend(msgs);
                }
            }
        }
    }

    fn run(&mut self) {
        let mut guard = 0;
        loop {
            while self.step() {
                guard += 1;
                assert!(guard < 1_000_000, "sync does not terminate");
            }
            self.tick();
            if self.queues.iter().flatten().all(|q| q.is_empty()) {
                return;
            }
        }
    }

    fn assert_converged(&mut self) {
        let first = self.nodes[0].doc.entries();
        for (i, n) in self.nodes.iter().enumerate() {
            assert_eq!(n.doc.entries(), first, "replica {i} differs from replica 0");
        }
    }
}

#[test]
fn pushes_replicate_and_deletes_propagate() {
    let mut net = Net::new(3, 1);
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(1, 2);
    net.run();
    net.put(0, "a", b"1", 0.0);
    net.put(1, "b", b"2", 0.0);
    net.run();
    net.delete(2, "a");
    net.run();
    net.assert_converged();
    let e = net.nodes[0].doc.entries();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, "b");
}

#[test]
fn lost_pushes_are_recovered_by_sync() {
    for seed in 0..20 {
        let mut net = Net::new(3, seed);
        net.connect(0, 1);
        net.connect(1, 2);
        net.connect(0, 2);
        net.run();
        for i in 0..30 {
            let n = i % 3;
            net.put(n, &format!("k{}", i % 7), format!("v{i}").as_bytes(), 0.3);
            // Deliver some, not all, between writes: reordering across links.
            for _ in 0..3 {
                net.step();
            }
        }
        net.run();
        net.assert_converged();
    }
}

#[test]
fn offline_replica_catches_up_on_reconnect_with_persisted_state() {
    let mut net = Net::new(2, 7);
    net.connect(0, 1);
    net.put(0, "before", b"x", 0.0);
    net.run();
    net.disconnect(0, 1);
    for i in 0..200 {
        net.put(0, &format!("k{i}"), b"offline", 0.0);
    }
    net.put(1, "mine", b"y", 0.0);
    net.connect(0, 1);
    net.run();
    net.assert_converged();
    assert_eq!(net.nodes[1].doc.entries().len(), 202);
}

#[test]
fn concurrent_writes_partitioned_then_healed_converge() {
    for seed in 0..10 {
        let mut net = Net::new(4, seed);
        for (a, b) in [(0, 1), (2, 3)] {
            net.connect(a, b);
        }
        for i in 0..40 {
            let n = i % 4;
            net.put(
                n,
                &format!("k{}", i % 5),
                format!("{n}-{i}").as_bytes(),
                0.0,
            );
        }
        net.delete(0, "k1");
        net.run();
        for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
            net.connect(a, b);
        }
        net.run();
        net.assert_converged();
    }
}

/// A document of node `[1; 32]` holding `key-00000000..n`, committed every `per_change` puts.
fn doc_with_keys(n: u32, per_change: u32) -> KvDoc {
    let mut d = KvDoc::new(&[1; 32]);
    for i in 0..n {
        d.put(
            &format!("key-{i:08}"),
            &value_hash(&i.to_be_bytes()),
            i.into(),
        )
        .unwrap();
        if (i + 1) % per_change == 0 {
            d.commit();
        }
    }
    d.commit();
    d
}

#[test]
fn sync_messages_larger_than_a_part_are_split_and_reassembled() {
    let mut a = doc_with_keys(5_000, 5_000);
    let mut b = KvDoc::new(&[2; 32]);
    let (mut sa, mut sb) = (
        PeerSync::with_part_size(4096),
        PeerSync::with_part_size(4096),
    );
    let mut parts_seen = 0;
    for _ in 0..10 {
        let to_b = sa.poll(&mut a, EpochId::ZERO).msgs;
        parts_seen = parts_seen.max(to_b.len());
        for m in to_b {
            sb.receive(&mut b, m).unwrap();
        }
        for m in sb.poll(&mut b, EpochId::ZERO).msgs {
            sa.receive(&mut a, m).unwrap();
        }
    }
    assert!(
        parts_seen > 1,
        "the whole document should need several parts"
    );
    assert_eq!(a.entries(), b.entries());
}

#[test]
fn malformed_peer_messages_are_errors_and_change_nothing() {
    let mut d = KvDoc::new(&[1; 32]);
    d.put("k", &value_hash(b"v"), 1).unwrap();
    d.commit();
    let before = d.entries();
    let mut s = PeerSync::new(None);
    assert!(s
        .receive(
            &mut d,
            DataMsg::Push {
                epoch: EpochId::ZERO,
                changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]],
                values: vec![]
            }
        )
        .is_err());
    assert!(s
        .receive(
            &mut d,
            DataMsg::Sync {
                epoch: EpochId::ZERO,
                part: vec![0x42, 9, 9, 9],
                last: true
            }
        )
        .is_err());
    assert_eq!(d.entries(), before);
}

/// Runs sync rounds between `a` and `b` until both are quiet; returns what `b` reported as
/// loaded whole and whether `a` flagged a whole-document send.
fn sync_pair(a: &mut KvDoc, b: &mut KvDoc) -> (Option<Loaded>, bool) {
    let (mut sa, mut sb) = (PeerSync::new(None), PeerSync::new(None));
    let (mut loaded, mut whole) = (None, false);
    for _ in 0..10 {
        let polled = sa.poll(a, EpochId::ZERO);
        whole |= polled.whole;
        for m in polled.msgs {
            if let Received::Synced { loaded: Some(l) } = sb.receive(b, m).unwrap() {
                assert!(loaded.is_none(), "a document is loaded whole once");
                loaded = Some(l);
            }
        }
        for m in sb.poll(b, EpochId::ZERO).msgs {
            sa.receive(a, m).unwrap();
        }
    }
    (loaded, whole)
}

#[test]
fn an_empty_replica_gets_the_whole_document_and_its_bytes_are_a_snapshot() {
    let mut a = doc_with_keys(300, 10);
    a.delete("key-00000007", 1_000).unwrap();
    a.commit();
    let mut b = KvDoc::new(&[2; 32]);
    let (loaded, whole) = sync_pair(&mut a, &mut b);
    assert!(whole, "the serving side flags the whole-document send");
    let (bytes, heads) = loaded.expect("the empty replica reports the document it loaded");
    assert_eq!(b.entries(), a.entries());
    assert_eq!(heads, a.heads());
    // The bytes are the document as it stands: loading them alone gives the same replica.
    let mut reloaded =
        KvDoc::load(Some(&bytes), &[], &[2; 32], &crate::history::EpochId::ZERO).unwrap();
    assert_eq!(reloaded.entries(), a.entries());
    assert_eq!(reloaded.heads(), a.heads());
}

#[test]
fn a_whole_document_crossed_by_the_empty_peers_message_is_not_sent_twice() {
    let mut a = doc_with_keys(300, 10);
    let mut b = KvDoc::new(&[2; 32]);
    let (mut sa, mut sb) = (PeerSync::new(None), PeerSync::new(None));
    let deliver = |msgs: Vec<DataMsg>, to: &mut PeerSync, doc: &mut KvDoc| {
        for m in msgs {
            to.receive(doc, m).unwrap();
        }
    };
    // Both open; A answers B's opening with the whole document, while B answers A's opening
    // with a message that still shows it empty.
    let a1 = sa.poll(&mut a, EpochId::ZERO);
    let b1 = sb.poll(&mut b, EpochId::ZERO);
    assert!(!a1.whole);
    deliver(b1.msgs, &mut sa, &mut a);
    let w = sa.poll(&mut a, EpochId::ZERO);
    assert!(w.whole);
    deliver(a1.msgs, &mut sb, &mut b);
    let b2 = sb.poll(&mut b, EpochId::ZERO);
    deliver(b2.msgs, &mut sa, &mut a);
    let mut wholes = 1;
    let again = sa.poll(&mut a, EpochId::ZERO);
    wholes += usize::from(again.whole);
    assert!(
        again.msgs.is_empty(),
        "nothing to say until B answers the document"
    );
    // B gets the document and answers; the rounds then run out with no second copy.
    deliver(w.msgs, &mut sb, &mut b);
    for _ in 0..6 {
        let m = sb.poll(&mut b, EpochId::ZERO);
        deliver(m.msgs, &mut sa, &mut a);
        let m = sa.poll(&mut a, EpochId::ZERO);
        wholes += usize::from(m.whole);
        deliver(m.msgs, &mut sb, &mut b);
    }
    assert_eq!(wholes, 1);
    assert_eq!(b.entries(), a.entries());
}

#[test]
fn a_whole_document_is_sent_again_if_the_peer_never_answers_it() {
    let mut a = doc_with_keys(100, 10);
    let mut b = KvDoc::new(&[2; 32]);
    let (mut sa, mut sb) = (PeerSync::new(None), PeerSync::new(None));
    let b1 = sb.poll(&mut b, EpochId::ZERO).msgs;
    for m in b1.iter().cloned() {
        sa.receive(&mut a, m).unwrap();
    }
    assert!(sa.poll(&mut a, EpochId::ZERO).whole);
    // The document is lost; B's opening is repeated (a reconnect would reset both sides).
    let mut resent = false;
    for _ in 0..=super::WHOLE_RESEND_AFTER_POLLS {
        for m in b1.iter().cloned() {
            sa.receive(&mut a, m).unwrap();
        }
        resent |= sa.poll(&mut a, EpochId::ZERO).whole;
    }
    assert!(resent, "held back for a bounded number of polls only");
}

#[test]
fn a_replica_with_history_is_synced_by_changes_not_by_a_whole_document() {
    let mut a = doc_with_keys(50, 1);
    let mut b = KvDoc::new(&[2; 32]);
    b.put("mine", &value_hash(b"b"), 1).unwrap();
    b.commit();
    let (loaded, whole) = sync_pair(&mut a, &mut b);
    assert!(loaded.is_none());
    assert!(!whole);
    assert_eq!(b.entries(), a.entries());
    assert_eq!(b.entries().len(), 51);
}

#[test]
fn a_whole_document_with_bytes_after_it_is_not_taken_as_a_snapshot() {
    let mut a = doc_with_keys(200, 10);
    // The whole-document message `a` sends an empty peer, found with an empty stand-in.
    let mut stand_in = KvDoc::new(&[9; 32]);
    let (mut sa, mut ss) = (PeerSync::new(None), PeerSync::new(None));
    let mut whole = None;
    for _ in 0..4 {
        let polled = sa.poll(&mut a, EpochId::ZERO);
        if polled.whole {
            whole = polled.msgs.into_iter().next();
            break;
        }
        for m in polled.msgs {
            ss.receive(&mut stand_in, m).unwrap();
        }
        for m in ss.poll(&mut stand_in, EpochId::ZERO).msgs {
            sa.receive(&mut a, m).unwrap();
        }
    }
    let Some(DataMsg::Sync { part, .. }) = whole else {
        panic!("no whole-document message");
    };
    // Garbage appended inside the document's chunk.
    let mut msg = automerge::sync::Message::decode(&part).unwrap();
    let mut chunk = msg.changes.iter().next().unwrap().to_vec();
    chunk.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    msg.changes = chunk.into();
    let tampered = msg.encode();

    // The untampered message is taken whole; the tampered one never is.
    let mut b = KvDoc::new(&[2; 32]);
    let loaded = b
        .receive_sync_message(&mut automerge::sync::State::new(), &part)
        .unwrap();
    assert!(loaded.is_some());
    let mut c = KvDoc::new(&[3; 32]);
    let r = c.receive_sync_message(&mut automerge::sync::State::new(), &tampered);
    assert!(
        matches!(r, Ok(None) | Err(_)),
        "tampered bytes taken as a snapshot"
    );
}

/// The whole document handed back unapplied by `receive_offloading` and loaded by
/// `WholeDoc::load` (on any thread) leaves the receiver where `receive` would have: same
/// document, same snapshot bytes, and a sync state that goes on from there.
#[test]
fn a_whole_document_loaded_apart_is_the_same_as_one_received() {
    let mut a = doc_with_keys(300, 10);
    let mut b = KvDoc::new(&[2; 32]);
    let (mut sa, mut sb) = (PeerSync::new(None), PeerSync::new(None));
    let mut loaded = None;
    for _ in 0..4 {
        for m in sa.poll(&mut a, EpochId::ZERO).msgs {
            match sb.receive_offloading(&mut b, m).unwrap() {
                Received::Whole(w) => {
                    assert!(b.is_empty(), "nothing was applied");
                    let l = std::thread::spawn(move || w.load(&[2; 32], &EpochId::ZERO))
                        .join()
                        .unwrap()
                        .unwrap();
                    b = l.doc;
                    sb.loaded(l.state);
                    assert_eq!(l.winners, b.all_entries());
                    loaded = l.loaded;
                }
                Received::Synced { loaded: Some(_) } => panic!("loaded in place"),
                _ => {}
            }
        }
        for m in sb.poll(&mut b, EpochId::ZERO).msgs {
            sa.receive(&mut a, m).unwrap();
        }
    }
    let (bytes, heads) = loaded.expect("a whole document for the empty replica");
    assert_eq!(b.entries(), a.entries());
    assert_eq!(heads, a.heads());
    let mut reloaded = KvDoc::load(Some(&bytes), &[], &[2; 32], &EpochId::ZERO).unwrap();
    assert_eq!(reloaded.heads(), a.heads());
    // The sync state went on from the loaded message: both are quiet, and a new write on A
    // travels as a change.
    assert!(sa.poll(&mut a, EpochId::ZERO).msgs.is_empty());
    assert!(sb.poll(&mut b, EpochId::ZERO).msgs.is_empty());
    a.put("late", &value_hash(b"late"), 10_000).unwrap();
    a.commit();
    for _ in 0..4 {
        let polled = sa.poll(&mut a, EpochId::ZERO);
        assert!(!polled.whole);
        for m in polled.msgs {
            assert!(!matches!(
                sb.receive_offloading(&mut b, m).unwrap(),
                Received::Whole(_)
            ));
        }
        for m in sb.poll(&mut b, EpochId::ZERO).msgs {
            sa.receive(&mut a, m).unwrap();
        }
    }
    assert_eq!(b.entries(), a.entries());
}

/// A whole document that does not load (a byte of it changed) is an error from
/// `WholeDoc::load`, and the receiving replica's own document was never touched.
#[test]
fn a_corrupt_whole_document_fails_to_load_apart() {
    let mut a = doc_with_keys(300, 10);
    let mut b = KvDoc::new(&[2; 32]);
    let (mut sa, mut sb) = (PeerSync::new(None), PeerSync::new(None));
    for m in sb.poll(&mut b, EpochId::ZERO).msgs {
        sa.receive(&mut a, m).unwrap();
    }
    let polled = sa.poll(&mut a, EpochId::ZERO);
    assert!(polled.whole);
    let mut bytes: Vec<u8> = polled
        .msgs
        .into_iter()
        .flat_map(|m| match m {
            DataMsg::Sync { part, .. } => part,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // A byte in the middle of the document chunk: its checksum no longer matches.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let msg = DataMsg::Sync {
        epoch: EpochId::ZERO,
        part: bytes,
        last: true,
    };
    match sb.receive_offloading(&mut b, msg).unwrap() {
        Received::Whole(w) => assert!(w.load(&[2; 32], &EpochId::ZERO).is_err()),
        other => panic!("expected a whole document, got {other:?}"),
    }
    assert!(b.is_empty());
}

/// Two replicas that both have nothing (nodes that never wrote): what one sends the other as
/// its "whole document" holds no change. Loading it is not an error (it once was, and closed
/// every connection between two empty nodes as soon as it synced), stores nothing, and the
/// pair goes quiet.
#[test]
fn an_empty_whole_document_from_an_empty_peer_loads_as_nothing() {
    /// Delivers what `from` has to say to `to`, loading a whole document as the replica does.
    fn deliver(
        (sf, df): (&mut PeerSync, &mut KvDoc),
        (st, dt, id): (&mut PeerSync, &mut KvDoc, [u8; 32]),
    ) -> usize {
        let mut wholes = 0;
        for m in sf.poll(df, EpochId::ZERO).msgs {
            match st.receive_offloading(dt, m).unwrap() {
                Received::Whole(w) => {
                    wholes += 1;
                    let l = w
                        .load(&id, &EpochId::ZERO)
                        .expect("an empty document loads");
                    assert!(l.loaded.is_none(), "nothing to store");
                    assert!(l.winners.is_empty());
                    *dt = l.doc;
                    st.loaded(l.state);
                }
                Received::Synced { loaded } => assert!(loaded.is_none()),
                _ => {}
            }
        }
        wholes
    }
    let mut a = KvDoc::empty(&[1; 32], &EpochId::ZERO);
    let mut b = KvDoc::empty(&[2; 32], &EpochId::ZERO);
    let (mut sa, mut sb) = (PeerSync::new(None), PeerSync::new(None));
    let mut wholes = 0;
    for _ in 0..4 {
        wholes += deliver((&mut sa, &mut a), (&mut sb, &mut b, [2; 32]));
        wholes += deliver((&mut sb, &mut b), (&mut sa, &mut a, [1; 32]));
    }
    assert!(
        wholes > 0,
        "the case under test: an empty document sent whole"
    );
    assert!(a.is_empty() && b.is_empty());
    assert!(sa.poll(&mut a, EpochId::ZERO).msgs.is_empty());
    assert!(sb.poll(&mut b, EpochId::ZERO).msgs.is_empty());
}
