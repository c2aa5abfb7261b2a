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
