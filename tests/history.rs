//! Bounded history across a swarm: epochs cut by the leader, adopted by every replica, with
//! writes racing the cut, replicas offline through several epochs, and partitions.

mod common;

use std::time::Duration;

use common::*;
use murmur::{CompactionPolicy, Event, Swarm};
use tokio_stream::StreamExt;

/// Automatic compaction that fires quickly in tests.
fn eager() -> CompactionPolicy {
    CompactionPolicy {
        automatic: true,
        ratio: 4,
        min_bytes: 16 << 10,
        min_interval: Duration::from_millis(500),
        ..CompactionPolicy::default()
    }
}

async fn eager_node(dir: &std::path::Path, peers: &[String]) -> Swarm {
    let s = builder(dir)
        .compaction(eager())
        .bootstrap(peers.iter().cloned())
        .build()
        .await
        .expect("build");
    s.start().await.expect("start");
    s
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

async fn same_epoch(nodes: &[&Swarm]) {
    wait_until("all replicas in the same epoch", || {
        let nodes = nodes.to_vec();
        async move { nodes.iter().all(|n| n.epoch() == nodes[0].epoch()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrites_are_compacted_on_every_replica_and_the_map_survives() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = eager_node(da.path(), &[]).await;
    let b = eager_node(db.path(), &[a.ticket()]).await;
    let c = eager_node(dc.path(), &[a.ticket()]).await;
    let mut events = b.subscribe();
    // 3000 overwrites of 20 keys, from all three nodes.
    for i in 0..3000u32 {
        let n = [&a, &b, &c][i as usize % 3];
        n.put(&format!("key-{}", i % 20), format!("value-{i}").as_bytes())
            .await
            .unwrap();
    }
    a.delete("key-0").await.unwrap();
    let map = converge(&[&a, &b, &c]).await;
    assert_eq!(map.len(), 19);
    // Every replica leaves epoch zero, and they end in the same one.
    wait_until("every replica compacted at least once", || async {
        [&a, &b, &c].iter().all(|n| n.epoch().n >= 1)
    })
    .await;
    same_epoch(&[&a, &b, &c]).await;
    assert_eq!(converge(&[&a, &b, &c]).await, map);
    // Followers report the switch.
    let compacted = tokio::time::timeout(DEADLINE, async {
        while let Some(e) = events.next().await {
            if let Event::Compacted {
                bytes_before,
                bytes_after,
                ..
            } = e
            {
                return (bytes_before, bytes_after);
            }
        }
        panic!("event stream ended")
    })
    .await
    .expect("a Compacted event on a follower");
    assert!(compacted.1 < compacted.0, "{compacted:?}");
    // After a final compaction, reopening finds the same map in a small store.
    // (The leader cuts at once; a follower's request reaches it a little later, so which call
    // makes the last epoch is a race: wait for all three to share one newer than before.)
    let before = [a.epoch(), b.epoch(), c.epoch()].into_iter().max().unwrap();
    a.compact().await.unwrap();
    b.compact().await.unwrap();
    wait_until("all replicas adopt a requested epoch", || async {
        let e = a.epoch();
        e > before && b.epoch() == e && c.epoch() == e
    })
    .await;
    same_epoch(&[&a, &b, &c]).await;
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
    for d in [&da, &db, &dc] {
        let bytes = dir_bytes(d.path());
        assert!(bytes < 400_000, "store of 19 live keys holds {bytes} bytes");
        let s = node(d.path(), &[]).await;
        assert_eq!(dump(&s).await, map);
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_offline_through_several_epochs_keeps_its_writes_and_catches_up() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = eager_node(da.path(), &[]).await;
    let b = eager_node(db.path(), &[a.ticket()]).await;
    b.put("shared", b"before").await.unwrap();
    converge(&[&a, &b]).await;
    let ticket = a.ticket();
    b.shutdown().await.unwrap();

    // B writes while offline (its store only: built, never started).
    let b = builder(db.path())
        .compaction(eager())
        .build()
        .await
        .unwrap();
    b.put("offline-write", b"from b").await.unwrap();
    b.put("shared", b"b was offline").await.unwrap();
    let b_epoch = b.epoch();
    b.shutdown().await.unwrap();
    // A compacts several times meanwhile (as the leader: wait for it to lead alone).
    wait_until("A leads", || async { a.is_leader().await }).await;
    let start = a.epoch();
    for round in 0..3 {
        for i in 0..400u32 {
            a.put(&format!("a-{}", i % 10), format!("{round}-{i}").as_bytes())
                .await
                .unwrap();
        }
        a.compact().await.unwrap();
    }
    assert!(a.epoch().n >= start.n + 3, "{:?} -> {:?}", start, a.epoch());
    a.delete("a-0").await.unwrap();

    // B comes back: it adopts A's epoch and carries its offline writes across.
    let b = eager_node(db.path(), &[ticket]).await;
    let map = converge(&[&a, &b]).await;
    same_epoch(&[&a, &b]).await;
    assert!(b.epoch() > b_epoch);
    let get = |k: &str| map.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    assert_eq!(get("offline-write"), Some(b"from b".to_vec()));
    assert_eq!(
        get("shared"),
        Some(b"b was offline".to_vec()),
        "the later write wins"
    );
    assert_eq!(
        get("a-0"),
        None,
        "a deletion made during the absence stays deleted"
    );
    assert_eq!(map.len(), 11);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_compaction_are_not_lost() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let policy = CompactionPolicy::manual();
    let mk = |d: &std::path::Path, peers: Vec<String>| {
        builder(d).compaction(policy).bootstrap(peers).build()
    };
    let a = mk(da.path(), vec![]).await.unwrap();
    a.start().await.unwrap();
    let b = mk(db.path(), vec![a.ticket()]).await.unwrap();
    b.start().await.unwrap();
    let c = mk(dc.path(), vec![a.ticket()]).await.unwrap();
    c.start().await.unwrap();
    wait_until("a leader", || async { a.leader_id().await.is_some() }).await;

    // Writers on every node, while compactions are requested over and over.
    let mut writers = Vec::new();
    for (w, n) in [a.clone(), b.clone(), c.clone()].into_iter().enumerate() {
        writers.push(tokio::spawn(async move {
            for i in 0..300u32 {
                n.put(&format!("w{w}-{i}"), b"v").await.unwrap();
                n.put(&format!("hot-{}", i % 5), format!("{w}-{i}").as_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    let compactor = {
        let nodes = [a.clone(), b.clone(), c.clone()];
        tokio::spawn(async move {
            for i in 0..15 {
                nodes[i % 3].compact().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    compactor.await.unwrap();
    let map = converge(&[&a, &b, &c]).await;
    same_epoch(&[&a, &b, &c]).await;
    assert!(a.epoch().n >= 2, "compactions happened: {:?}", a.epoch());
    for w in 0..3 {
        for i in 0..300 {
            let k = format!("w{w}-{i}");
            assert!(map.iter().any(|(kk, _)| *kk == k), "{k} was lost");
        }
    }
    assert_eq!(map.len(), 900 + 5);
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

/// Issue 15, deleted values: a leader whose clock runs 40 days ahead cuts an epoch while no
/// peer is connected. A tombstone one minute old by everyone else's clock is 40 days old by its
/// own; it must be kept (a node that measures no peer's clock cannot tell its own is wrong), or
/// the replica that was offline with the old value brings it back to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_forty_days_ahead_does_not_forget_a_fresh_deletion() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let (dl, dx, dd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let manual = |dir: &std::path::Path| builder(dir).compaction(CompactionPolicy::manual());
    // A started node with manual compaction, bootstrapped from L.
    let joining = async |dir: &std::path::Path, l: &murmur::Swarm| {
        let n = manual(dir).bootstrap([l.ticket()]).build().await.unwrap();
        n.start().await.unwrap();
        n
    };
    let l = manual(dl.path())
        .test_clock_skew_ms(40 * DAY_MS)
        .build()
        .await
        .unwrap();
    l.start().await.unwrap();
    let x = joining(dx.path(), &l).await;
    let d = joining(dd.path(), &l).await;
    x.put("k", b"old value").await.unwrap();
    converge(&[&l, &x, &d]).await;
    // X goes offline holding the value; D deletes it; L has the deletion; D leaves too.
    x.shutdown().await.unwrap();
    d.delete("k").await.unwrap();
    wait_until("L has the deletion", || async {
        l.get("k").await.unwrap().is_none()
    })
    .await;
    d.shutdown().await.unwrap();
    // L, alone, leads and cuts an epoch.
    wait_until("L leads alone", || async { l.is_leader().await }).await;
    let before = l.epoch();
    l.compact().await.unwrap();
    assert!(l.epoch() > before);
    // X comes back, adopts L's epoch and carries its old state across: the deletion holds.
    let x = joining(dx.path(), &l).await;
    same_epoch(&[&l, &x]).await;
    let map = converge(&[&l, &x]).await;
    assert!(
        map.iter().all(|(k, _)| k != "k"),
        "the deleted value came back: {map:?}"
    );
    l.shutdown().await.unwrap();
    x.shutdown().await.unwrap();
}
