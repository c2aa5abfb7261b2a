//! A replica recovers by itself from a commit that failed (issue: "a replica silently stops
//! applying peers' writes after one failed commit").
//!
//! The fault is injected as users met it: another SQLite connection holds the database's
//! write lock (as a backup tool or an `sqlite3` shell does) for longer than the store's busy
//! timeout, so the replica's commits fail with `database is locked`. Each test waits until the
//! replica has counted a failed commit of the kind it is about, releases the lock, and then
//! requires convergence within a deadline: without the recovery, the replica that failed never
//! applies the lost changes (nor anything that depends on them), and the wait times out.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tempfile::TempDir;

use crate::{test_node, Error, Event, Swarm};

async fn node(dir: &Path, peers: &[String]) -> Swarm {
    test_node(dir, "replica-fault-tests", peers).await
}

/// Another connection holding the write lock of a node's database until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn hold(dir: &Path) -> WriteLock {
        let conn = rusqlite::Connection::open(dir.join("murmur.sqlite3")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// Waits for `cond` with a deadline long enough for a few busy timeouts (5 s each).
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two nodes, B bootstrapped from A, once A holds B's first write (`x`): their link is up and
/// replicating. Returns their directories too (dropping one deletes it).
async fn replicating_pair() -> (TempDir, TempDir, Swarm, Swarm) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    let b = node(db.path(), &[a.ticket()]).await;
    b.put("x", b"1").await.unwrap();
    until("A has x", async || a.get("x").await.unwrap().is_some()).await;
    (da, db, a, b)
}

/// Every key and value of a node, in key order.
async fn dump(s: &Swarm) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in s.keys("").await.unwrap() {
        if let Some(v) = s.get(&k).await.unwrap() {
            out.push((k, v));
        }
    }
    out
}

async fn converged(a: &Swarm, b: &Swarm) -> bool {
    dump(a).await == dump(b).await
}

/// The reproduction: B writes while A's database is locked, so A receives B's changes
/// (pushed, and sent again by B's anti-entropy rounds) but cannot commit them. Once the lock
/// is gone, A must hold everything B wrote, including what B writes afterwards (which depends
/// on the lost changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_changes_lost_to_a_failed_commit_arrive_once_storage_works() {
    let (da, _db, a, b) = replicating_pair().await;

    let lock = WriteLock::hold(da.path());
    for i in 0..5 {
        b.put(&format!("k{i}"), format!("v{i}")).await.unwrap();
        // Spread over anti-entropy rounds: B's sync state records the changes as sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A's commits of B's changes fail (each after the busy timeout); hold the lock until
    // more than one did, so that B's sync rounds ran against the failing replica too.
    until("A failed to commit B's changes twice", async || {
        a.failed_commits() >= 2
    })
    .await;
    assert_eq!(
        a.get("k0").await.unwrap(),
        None,
        "nothing commits while locked"
    );
    drop(lock);

    b.put("after", b"!").await.unwrap();
    until("A converges with B", async || converged(&a, &b).await).await;
    assert_eq!(a.len().await.unwrap(), 7);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The storage events a node reported, collected in the background.
fn storage_events(s: &Swarm) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut events = s.subscribe();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::StorageFailed { .. } | Event::StorageRecovered) {
                out.lock().unwrap().push(ev);
            }
        }
    });
    seen
}

/// A local write whose commit fails is refused (and made nowhere); later writes work and
/// replicate, in both directions. Subscribers hear of the failure once, however many
/// attempts fail, and of the recovery once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_that_failed_is_made_nowhere_and_later_writes_replicate() {
    let (da, _db, a, b) = replicating_pair().await;
    let reported = storage_events(&a);

    let lock = WriteLock::hold(da.path());
    for _ in 0..2 {
        let refused = a.put("lost", b"never").await;
        assert!(
            matches!(&refused, Err(Error::Storage(m)) if m.contains("locked")),
            "{refused:?}"
        );
    }
    assert_eq!(a.get("lost").await.unwrap(), None);
    until("the failure is reported", async || {
        !reported.lock().unwrap().is_empty()
    })
    .await;
    drop(lock);

    a.put("kept", b"yes").await.unwrap();
    until("the recovery is reported", async || {
        reported.lock().unwrap().len() >= 2
    })
    .await;
    {
        let reported = reported.lock().unwrap();
        assert!(
            matches!(&reported[..], [Event::StorageFailed { error }, Event::StorageRecovered]
                if error.contains("locked")),
            "{reported:?}"
        );
    }
    b.put("from-b", b"too").await.unwrap();
    until("both converge", async || converged(&a, &b).await).await;
    assert_eq!(b.get("kept").await.unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(a.get("from-b").await.unwrap().as_deref(), Some(&b"too"[..]));
    assert_eq!(b.get("lost").await.unwrap(), None);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// An empty node whose commit of the whole document it was sent fails gets it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_load_that_failed_to_commit_is_sent_again() {
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &[]).await;
    for i in 0..50 {
        a.put(&format!("k{i:02}"), format!("v{i}")).await.unwrap();
    }
    let c = crate::Swarm::builder()
        .storage_path(dc.path())
        .swarm_name("replica-fault-tests")
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .relay_mode(crate::RelayMode::Disabled)
        .local_discovery(false)
        .heartbeat_interval(Duration::from_millis(100))
        .leader_timeout(Duration::from_millis(500))
        .bootstrap([a.ticket()])
        .build()
        .await
        .unwrap();
    // Hold C's next whole-document load until its database is locked.
    let (arrived, release) = super::load_gate::install(super::tests::node_bytes(&c));
    c.start().await.unwrap();
    super::load_gate::arrival(arrived).await;
    let lock = WriteLock::hold(dc.path());
    drop(release);
    until("C failed to commit the loaded document", async || {
        c.failed_commits() >= 1
    })
    .await;
    assert_eq!(c.len().await.unwrap(), 0);
    drop(lock);

    a.put("after", b"!").await.unwrap();
    until("C converges with A", async || converged(&a, &c).await).await;
    assert_eq!(c.len().await.unwrap(), 51);
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// A follower whose switch to the leader's new epoch fails to commit switches later, and
/// keeps replicating with the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_switch_that_failed_to_commit_is_made_later() {
    let (da, db, a, b) = replicating_pair().await;
    until("one leader", async || {
        a.is_leader().await != b.is_leader().await
    })
    .await;
    let (leader, follower, follower_dir) = if a.is_leader().await {
        (&a, &b, db.path())
    } else {
        (&b, &a, da.path())
    };

    let lock = WriteLock::hold(follower_dir);
    leader.compact().await.unwrap();
    let epoch = leader.epoch();
    until("the follower failed to switch", async || {
        follower.failed_commits() >= 1
    })
    .await;
    assert_ne!(follower.epoch(), epoch);
    drop(lock);

    until("the follower switched", async || follower.epoch() == epoch).await;
    leader.put("y", b"2").await.unwrap();
    follower.put("z", b"3").await.unwrap();
    until("both converge", async || converged(&a, &b).await).await;
    assert_eq!(a.len().await.unwrap(), 3);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A replica that cannot even read its store after a failed commit refuses writes and peers'
/// changes until it can (it must not use a document that may hold what the store lacks),
/// retries at every batch, and then catches up with everything it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_reload_refuses_everything_until_it_can() {
    let (da, _db, a, b) = replicating_pair().await;
    let a_id = super::tests::node_bytes(&a);
    let reported = storage_events(&a);

    super::reload_fault::set(a_id, true);
    let lock = WriteLock::hold(da.path());
    let refused = a.put("lost", b"never").await;
    assert!(
        matches!(&refused, Err(Error::Storage(m)) if m.contains("locked")),
        "{refused:?}"
    );
    drop(lock);
    // The lock is gone, but the document could not be reloaded: still refused, with a reason
    // that says so, and B's writes are not applied either.
    let refused = a.put("also-lost", b"never").await;
    assert!(
        matches!(&refused, Err(Error::Storage(m)) if m.contains("cannot reload")),
        "{refused:?}"
    );
    let failed = a.failed_commits();
    b.put("from-b", b"while A is stale").await.unwrap();
    // B's push arrives at once; each batch A refuses counts (a tick makes one every second).
    until("A refused two more batches", async || {
        a.failed_commits() >= failed + 2
    })
    .await;
    assert_eq!(a.get("from-b").await.unwrap(), None);

    super::reload_fault::set(a_id, false);
    a.put("kept", b"yes").await.unwrap();
    until("both converge", async || converged(&a, &b).await).await;
    assert_eq!(
        a.get("from-b").await.unwrap().as_deref(),
        Some(&b"while A is stale"[..])
    );
    assert_eq!(b.get("kept").await.unwrap().as_deref(), Some(&b"yes"[..]));
    for k in ["lost", "also-lost"] {
        assert_eq!(a.get(k).await.unwrap(), None);
        assert_eq!(b.get(k).await.unwrap(), None);
    }
    let reported = reported.lock().unwrap().clone();
    assert!(
        matches!(
            &reported[..],
            [Event::StorageFailed { .. }, Event::StorageRecovered]
        ),
        "{reported:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
