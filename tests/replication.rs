//! Replication between in-process nodes on 127.0.0.1.

mod common;

use common::*;
use murmur::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_puts_and_deletes_both_ways() {
    init_tracing();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = node(dirs[0].path(), &[]).await;
    let b = node(dirs[1].path(), &[a.ticket()]).await;
    // C only knows B: peer exchange must connect it to A as well.
    let c = node(dirs[2].path(), &[b.ticket()]).await;
    wait_until("full mesh", || async {
        a.peers().await.iter().filter(|p| p.connected).count() == 2
            && c.peers().await.iter().filter(|p| p.connected).count() == 2
    })
    .await;

    a.put("from-a", b"1").await.unwrap();
    c.put("from-c", b"3").await.unwrap();
    b.put("doomed", b"x").await.unwrap();
    let map = converge(&[&a, &b, &c]).await;
    assert_eq!(map.len(), 3);

    // Deletes from either end propagate too.
    c.delete("from-a").await.unwrap();
    a.delete("doomed").await.unwrap();
    let map = converge(&[&a, &b, &c]).await;
    assert_eq!(map, vec![("from-c".to_string(), b"3".to_vec())]);
    for n in [&a, &b, &c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_the_same_keys_converge_identically() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = node(dirs[0].path(), &[]).await;
    let b = node(dirs[1].path(), &[a.ticket()]).await;
    let c = node(dirs[2].path(), &[a.ticket()]).await;
    let mut tasks = Vec::new();
    for (i, n) in [a.clone(), b.clone(), c.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for j in 0..50 {
                n.put(&format!("k{}", j % 10), format!("node{i}-{j}"))
                    .await
                    .unwrap();
                if j % 7 == 0 {
                    n.delete(&format!("k{}", (j + 3) % 10)).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let map = converge(&[&a, &b, &c]).await;
    assert!(!map.is_empty());
    for n in [&a, &b, &c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_node_catches_up_on_reconnect() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.ticket()]).await;
    a.put("early", b"1").await.unwrap();
    converge(&[&a, &b]).await;
    let b_id = b.node_id();
    b.shutdown().await.unwrap();

    // While B is away: many writes, a delete, an overwrite.
    for i in 0..300 {
        a.put(&format!("while-away-{i:04}"), vec![i as u8; 100])
            .await
            .unwrap();
    }
    a.delete("early").await.unwrap();

    let b = node(db.path(), &[]).await; // no bootstrap: it remembers A
    assert_eq!(b.node_id(), b_id);
    let map = converge(&[&a, &b]).await;
    assert_eq!(map.len(), 300);
    assert_eq!(b.get("early").await.unwrap(), None);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_data_and_id_and_resyncs() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.ticket()]).await;
    b.put("mine", b"kept").await.unwrap();
    converge(&[&a, &b]).await;
    let id = b.node_id();
    b.shutdown().await.unwrap();

    // Reopened without networking: the data is local.
    let b2 = builder(db.path()).build().await.unwrap();
    assert_eq!(b2.node_id(), id);
    assert_eq!(b2.get("mine").await.unwrap(), Some(b"kept".to_vec()));
    a.put("after", b"restart").await.unwrap();
    b2.start().await.unwrap();
    let map = converge(&[&a, &b2]).await;
    assert_eq!(map.len(), 2);
    a.shutdown().await.unwrap();
    b2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_local_and_remote_changes_with_origin() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.ticket()]).await;
    let mut ev_b = b.subscribe();
    // Connected first: otherwise B may learn of the put and the delete at once, and see nothing.
    wait_until("A and B connected", || async {
        b.peers().await.iter().any(|p| p.connected)
    })
    .await;
    a.put("k", b"v").await.unwrap();
    wait_until("k reaches B", || async {
        b.get("k").await.unwrap().is_some()
    })
    .await;
    b.put("local", b"l").await.unwrap();
    a.delete("k").await.unwrap();

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < 3 {
        let ev = tokio::time::timeout_at(deadline, ev_b.recv())
            .await
            .expect("events in time")
            .expect("stream open");
        match ev {
            Event::Put { .. } | Event::Deleted { .. } => seen.push(ev),
            _ => {}
        }
    }
    assert!(seen.contains(&Event::Put {
        key: "k".into(),
        value: b"v".to_vec(),
        origin: a.node_id()
    }));
    assert!(seen.contains(&Event::Put {
        key: "local".into(),
        value: b"l".to_vec(),
        origin: b.node_id()
    }));
    assert!(seen.contains(&Event::Deleted {
        key: "k".into(),
        origin: a.node_id()
    }));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_both_sides_while_apart_merge_after_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.ticket()]).await;
    wait_until("connected", || async {
        a.peers().await.iter().any(|p| p.connected)
    })
    .await;
    // B writes and leaves at once: the push may or may not get out before the connection closes.
    b.put("mine", b"kept").await.unwrap();
    b.shutdown().await.unwrap();
    a.put("after", b"x").await.unwrap();
    let b = node(db.path(), &[]).await;
    let map = converge(&[&a, &b]).await;
    assert_eq!(map.len(), 2, "{map:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A fresh node joins a node holding thousands of keys (the snapshot transfer: the whole
/// document, then every value unasked). It reports every key with its value as an event,
/// matches the source exactly (overwrites and deletions included), and after a restart
/// without the network still has all of it: what it stored from the transfer is a complete
/// replica on its own, and takes writes on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_joins_by_snapshot_and_keeps_it_across_restart() {
    const N: usize = 3_000;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    for i in 0..N {
        a.put(&format!("key-{i:05}"), format!("value-{i}").repeat(8))
            .await
            .unwrap();
    }
    for i in (0..N).step_by(10) {
        a.delete(&format!("key-{i:05}")).await.unwrap();
    }
    for i in (5..N).step_by(10) {
        a.put(&format!("key-{i:05}"), b"overwritten").await.unwrap();
    }
    let expected = dump(&a).await;
    assert_eq!(expected.len(), N - N / 10);

    let b = builder(db.path())
        .bootstrap([a.ticket()])
        .build()
        .await
        .unwrap();
    let mut events = b.subscribe();
    b.start().await.unwrap();
    let map = converge(&[&a, &b]).await;
    assert_eq!(map, expected);
    // One Put event per key, with the value it holds.
    let mut reported = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while reported.len() < expected.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Put { key, value, origin })) => {
                assert_eq!(origin, a.node_id(), "{key} reported with the wrong origin");
                reported.insert(key, value);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream closed"),
            Err(_) => panic!("{} of {} keys reported", reported.len(), expected.len()),
        }
    }
    assert_eq!(reported.into_iter().collect::<Vec<_>>(), expected);

    // Nothing was written since the transfer, so the shutdown has nothing to fold: the reopen
    // loads the document bytes exactly as they arrived.
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    let b2 = builder(db.path()).build().await.unwrap();
    assert_eq!(dump(&b2).await, expected);
    b2.put("written-after-join", b"b").await.unwrap();
    b2.shutdown().await.unwrap();
    let b3 = builder(db.path()).build().await.unwrap();
    let mut after = expected.clone();
    after.push(("written-after-join".to_string(), b"b".to_vec()));
    after.sort();
    assert_eq!(dump(&b3).await, after);
    b3.shutdown().await.unwrap();
}

/// Builds and starts a node whose wall clock runs `skew_ms` ahead of the system clock.
async fn skewed_node(dir: &std::path::Path, peers: &[String], skew_ms: i64) -> murmur::Swarm {
    let s = builder(dir)
        .bootstrap(peers.iter().cloned())
        .test_clock_skew_ms(skew_ms)
        .build()
        .await
        .expect("build");
    s.start().await.expect("start");
    s
}

/// The offset `of` reports for peer `peer`, once measured.
async fn offset(of: &murmur::Swarm, peer: &murmur::Swarm) -> Option<i64> {
    of.peers()
        .await
        .into_iter()
        .find(|p| p.id == peer.node_id() && p.connected)
        .and_then(|p| p.clock_offset_ms)
}

/// Issue 15, clocks: node F's clock runs a day ahead. Its write must not drag M's and N's
/// clocks: once M and N have seen it, a partition makes them write one key concurrently, M at
/// T and N at T + 5 s, and N's later write wins everywhere. While connected, F sees that its
/// clock is off the others' and refuses writes; `peers()` shows each offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_a_day_ahead_neither_drags_the_others_nor_writes_while_connected() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    init_tracing();
    let (df, dm, dn) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // Alone, F cannot tell its clock is wrong: its write is accepted.
    let f = skewed_node(df.path(), &[], DAY_MS).await;
    f.put("a", b"from the future").await.unwrap();
    let m = node(dm.path(), &[f.ticket()]).await;
    let n = node(dn.path(), &[f.ticket()]).await;
    wait_until("M and N have F's write", || async {
        m.get("a").await.unwrap().is_some() && n.get("a").await.unwrap().is_some()
    })
    .await;
    // Every clock is measured; F is a day ahead of both others (to within a few seconds on
    // a loaded machine), M and N agree.
    wait_until("every offset measured", || async {
        offset(&f, &m).await.is_some()
            && offset(&f, &n).await.is_some()
            && offset(&m, &f).await.is_some()
            && offset(&m, &n).await.is_some()
    })
    .await;
    let near = |o: Option<i64>, want: i64| o.is_some_and(|o| (o - want).abs() < 5_000);
    assert!(near(offset(&f, &m).await, -DAY_MS), "{:?}", f.peers().await);
    assert!(near(offset(&m, &f).await, DAY_MS), "{:?}", m.peers().await);
    assert!(near(offset(&m, &n).await, 0), "{:?}", m.peers().await);
    // F is refused, with the error that says why; M and N write on.
    match f.put("a", b"again").await {
        Err(murmur::Error::ClockSkew { offset_ms, max_ms }) => {
            assert!((offset_ms - DAY_MS).abs() < 5_000, "{offset_ms}");
            assert_eq!(max_ms, 60_000);
        }
        other => panic!("expected ClockSkew, got {other:?}"),
    }
    assert!(matches!(
        f.delete("a").await,
        Err(murmur::Error::ClockSkew { .. })
    ));
    // M overwrites F's key: a writer beats what it saw, whatever its stamp.
    m.put("a", b"from M").await.unwrap();
    wait_until("M's overwrite reached everyone", || async {
        for s in [&f, &n] {
            if s.get("a").await.unwrap().as_deref() != Some(&b"from M"[..]) {
                return false;
            }
        }
        true
    })
    .await;
    for s in [&f, &m, &n] {
        s.shutdown().await.unwrap();
    }

    // The partition: M writes `b` (twice: with a clock dragged by F's stamp, its counter would
    // put it ahead) while N is away; then N, with a clock 5 s later, writes it while M is away.
    let m = node(dm.path(), &[]).await;
    m.put("b", b"M, first").await.unwrap();
    m.put("b", b"M at T").await.unwrap();
    m.shutdown().await.unwrap();
    let n = skewed_node(dn.path(), &[], 5_000).await;
    n.put("b", b"N at T+5s").await.unwrap();
    // Heal.
    let m = node(dm.path(), &[n.ticket()]).await;
    let map = converge(&[&m, &n]).await;
    let b = map
        .iter()
        .find(|(k, _)| k == "b")
        .map(|(_, v)| v.as_slice());
    assert_eq!(b, Some(&b"N at T+5s"[..]), "the later write wins");
    m.shutdown().await.unwrap();
    n.shutdown().await.unwrap();
}
