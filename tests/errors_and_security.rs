//! Bad input, misuse and intruders: each gets a clear error and changes nothing.

mod common;

use common::*;
use murmur::{Error, Swarm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_and_oversized_values_are_refused_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = builder(d.path())
        .max_value_size(1000)
        .build()
        .await
        .unwrap();
    let long = "k".repeat(1025);
    for bad in ["", long.as_str(), "nul\0inside"] {
        assert!(
            matches!(s.put(bad, b"v").await, Err(Error::InvalidKey { .. })),
            "{bad:?}"
        );
        assert!(matches!(s.get(bad).await, Err(Error::InvalidKey { .. })));
        assert!(matches!(s.delete(bad).await, Err(Error::InvalidKey { .. })));
    }
    // 1024 bytes is fine, including multi-byte UTF-8.
    s.put(&"é".repeat(512), b"ok").await.unwrap();
    match s.put("big", vec![0u8; 1001]).await {
        Err(Error::ValueTooLarge {
            size: 1001,
            max: 1000,
        }) => {}
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    s.put("exact", vec![1u8; 1000]).await.unwrap();
    assert_eq!(s.keys("").await.unwrap().len(), 2);
    assert_eq!(s.get("big").await.unwrap(), None);
    let msg = Error::ValueTooLarge { size: 2, max: 1 }.to_string();
    assert!(
        msg.contains("max_value_size"),
        "error says what to do: {msg}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_after_shutdown_fails_with_closed() {
    let d = tempfile::tempdir().unwrap();
    let s = node(d.path(), &[]).await;
    let clone = s.clone();
    s.put("k", b"v").await.unwrap();
    s.shutdown().await.unwrap();
    assert!(matches!(clone.put("k", b"v").await, Err(Error::Closed)));
    assert!(matches!(clone.get("k").await, Err(Error::Closed)));
    assert!(matches!(clone.delete("k").await, Err(Error::Closed)));
    assert!(matches!(clone.keys("").await, Err(Error::Closed)));
    assert!(matches!(clone.start().await, Err(Error::Closed)));
    assert!(matches!(clone.shutdown().await, Err(Error::Closed)));
    assert!(!clone.is_leader().await);
    assert_eq!(clone.leader_id().await, None);
    // The directory is released: it opens again, with the data.
    let again = builder(d.path()).build().await.unwrap();
    assert_eq!(again.get("k").await.unwrap(), Some(b"v".to_vec()));
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_a_directory_fails_with_locked() {
    let d = tempfile::tempdir().unwrap();
    let s = builder(d.path()).build().await.unwrap();
    s.put("k", b"v").await.unwrap();
    match builder(d.path()).build().await {
        Err(Error::Locked { path }) => assert_eq!(path, d.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(s.get("k").await.unwrap(), Some(b"v".to_vec()));
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_reported_and_left_untouched() {
    let d = tempfile::tempdir().unwrap();
    let s = builder(d.path()).build().await.unwrap();
    s.put("k", b"v").await.unwrap();
    s.shutdown().await.unwrap();
    let db = d.path().join("murmur.sqlite3");
    // Checkpointed on close; overwrite the header and first pages with garbage.
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b = 0x5A;
    }
    std::fs::write(&db, &bytes).unwrap();
    let _ = std::fs::remove_file(d.path().join("murmur.sqlite3-wal"));
    match builder(d.path()).build().await {
        Err(e @ Error::Corrupt { .. }) => {
            assert!(e.to_string().contains("resync"), "says what to do: {e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the file was not modified"
    );
}

/// `n` bytes of deterministic garbage (xorshift).
fn garbage(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_middle_of_the_database_is_corrupt_and_left_untouched() {
    let d = tempfile::tempdir().unwrap();
    let s = builder(d.path()).build().await.unwrap();
    for i in 0..300u32 {
        s.put(&format!("key{i:04}"), &[i as u8; 300]).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let db = d.path().join("murmur.sqlite3");
    assert!(
        !d.path().join("murmur.sqlite3-wal").exists(),
        "checkpointed into the database on close"
    );
    // One page of garbage in the middle of the file: what a bad sector or a stray write does.
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() >= 20 * 4096, "{} bytes", bytes.len());
    let mid = bytes.len() / 2 / 4096 * 4096;
    bytes[mid..mid + 4096].copy_from_slice(&garbage(4096, 0x9E37_79B9_7F4A_7C15));
    std::fs::write(&db, &bytes).unwrap();
    match builder(d.path()).build().await {
        Err(e @ Error::Corrupt { .. }) => {
            assert!(e.to_string().contains("malformed"), "says why: {e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        std::fs::read(&db).unwrap() == bytes,
        "the file was not modified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_connection_is_a_storage_error_that_says_so_once() {
    let d = tempfile::tempdir().unwrap();
    let s = builder(d.path()).build().await.unwrap();
    s.put("k", b"v").await.unwrap();
    // An sqlite3 shell or a backup tool holding the write lock longer than Murmur waits (5 s).
    let other = rusqlite::Connection::open(d.path().join("murmur.sqlite3")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let put = tokio::time::timeout(DEADLINE, s.put("k2", b"w")).await;
    let e = put
        .expect("the put gives up")
        .expect_err("the lock is held");
    assert!(matches!(e, Error::Storage(_)), "{e:?}");
    let m = e.to_string();
    assert!(m.contains("locked by another connection"), "{m}");
    assert!(m.contains("close it and retry"), "{m}");
    assert_eq!(m.matches("storage error").count(), 1, "{m}");
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    s.put("k2", b"w").await.unwrap();
    assert_eq!(s.get("k2").await.unwrap(), Some(b"w".to_vec()));
    s.shutdown().await.unwrap();
}

/// A small tmpfs mounted on a temporary directory (as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one of `size` (`2m`), or says loudly why not and returns `None` where mounting
    /// is not permitted (not root, or no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<SmallDisk> {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(SmallDisk { dir });
        }
        let why = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let permitted = ![
            "permission denied",
            "not permitted",
            "superuser",
            "only root",
        ]
        .iter()
        .any(|w| why.contains(w));
        assert!(!permitted, "mount failed: {why}");
        // Straight to the process's stderr: the test harness shows captured output only on
        // failure, and this test must not pass silently.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (not tested): mounting a tmpfs is not permitted here ({}); run as root \
             to test a full disk",
            why.trim()
        );
        None
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk with a ballast file, to the last byte; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 1] {
            let buf = vec![0xBA; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }

    fn remount(&self, opt: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(self.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {opt}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = std::process::Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(self.dir.path()).status().is_ok_and(|s| s.success())
        };
        if !umount(false) {
            umount(true);
        }
    }
}

/// What a full disk must say: a storage error (never "corrupt"), once, with what to do.
fn says_disk_full(e: &Error) {
    let m = e.to_string();
    assert!(matches!(e, Error::Storage(_)), "expected Storage, got {m}");
    assert!(m.contains("full") && m.contains("free some space"), "{m}");
    assert_eq!(m.matches("storage error").count(), 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_storage_error_and_the_store_opens_intact_once_space_returns() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let d = disk.path().join("node");
    let s = builder(&d).build().await.unwrap();
    let id = s.node_id();
    s.put("k", b"v").await.unwrap();

    // A write that finds the disk full.
    let ballast = disk.fill();
    let put = tokio::time::timeout(DEADLINE, s.put("big", &vec![7u8; 256 * 1024])).await;
    says_disk_full(&put.expect("the put gives up").expect_err("no space for it"));
    std::fs::remove_file(&ballast).unwrap();
    s.put("after", b"w").await.unwrap();
    s.shutdown().await.unwrap();

    // An open that finds the disk full: an intact store, not a corrupt one.
    let ballast = disk.fill();
    match builder(&d).build().await {
        Err(e) => says_disk_full(&e),
        Ok(s) => {
            s.shutdown().await.unwrap();
            panic!("opened on a full disk");
        }
    }
    std::fs::remove_file(&ballast).unwrap();

    // A read-only file system: a storage error that says so.
    disk.remount("ro");
    match builder(&d).build().await {
        Err(e @ Error::Storage(_)) => {
            assert!(e.to_string().to_lowercase().contains("read-only"), "{e}")
        }
        Err(e) => panic!("expected Storage, got {e}"),
        Ok(s) => {
            s.shutdown().await.unwrap();
            panic!("opened read-only as if writable");
        }
    }
    disk.remount("rw");

    // Space is back: the same node, with its data.
    let s = builder(&d).build().await.unwrap();
    assert_eq!(s.node_id(), id);
    assert_eq!(s.get("k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.get("after").await.unwrap(), Some(b"w".to_vec()));
    assert_eq!(s.get("big").await.unwrap(), None);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_and_tickets_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let bad = builder(d.path())
        .heartbeat_interval(std::time::Duration::from_secs(2))
        .leader_timeout(std::time::Duration::from_secs(1));
    assert!(matches!(bad.build().await, Err(Error::Config(_))));
    let bad = builder(d.path()).bootstrap(["not a ticket"]);
    assert!(matches!(
        bad.build().await,
        Err(Error::InvalidTicket { .. })
    ));
    let bad = builder(d.path()).max_value_size(usize::MAX);
    assert!(matches!(bad.build().await, Err(Error::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_swarm_key_is_refused_and_learns_nothing() {
    let (da, db, dx) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = node(da.path(), &[]).await;
    a.put("secret", b"members only").await.unwrap();
    let b = node(db.path(), &[a.ticket()]).await;
    // The intruder knows A's address but holds another key.
    let x: Swarm = builder(dx.path())
        .swarm_key([9u8; 32])
        .bootstrap([a.ticket()])
        .build()
        .await
        .unwrap();
    x.start().await.unwrap();
    x.put("intruder", b"write").await.unwrap();
    // The member joins and syncs; by then the intruder has had the same chance.
    converge(&[&a, &b]).await;
    wait_until("member B has the secret", || async {
        b.get("secret").await.unwrap().is_some()
    })
    .await;
    // Give the intruder's dial loop several attempts (each is refused at the handshake).
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT * 4;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            x.get("secret").await.unwrap(),
            None,
            "intruder learned data"
        );
        assert_eq!(
            a.get("intruder").await.unwrap(),
            None,
            "intruder wrote data"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(x.peers().await.iter().all(|p| !p.connected));
    assert!(a
        .peers()
        .await
        .iter()
        .all(|p| p.id != x.node_id() || !p.connected));
    // Alone, it leads only itself: once its startup grace (the dial timeout, 3 s, given to a
    // node that knows peers it has not reached) has passed.
    wait_until("the intruder, alone, leads only itself", || async {
        x.leader_id().await == Some(x.node_id())
    })
    .await;
    for n in [a, b, x] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_swarm_key_shuts_out_a_removed_member() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let k1 = [1u8; 32];
    let k2 = [2u8; 32];
    let start = |i: usize, key: [u8; 32], peers: Vec<String>| {
        let dir = dirs[i].path().to_path_buf();
        async move {
            let s = builder(&dir)
                .swarm_key(key)
                .bootstrap(peers)
                .build()
                .await
                .unwrap();
            s.start().await.unwrap();
            s
        }
    };
    let a = start(0, k1, vec![]).await;
    let b = start(1, k1, vec![a.ticket()]).await;
    let removed = start(2, k1, vec![a.ticket()]).await;
    a.put("before", b"shared with all three").await.unwrap();
    converge(&[&a, &b, &removed]).await;

    // Rotation: the remaining members restart with a new key. They remember each other.
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let a = start(0, k2, vec![]).await;
    let b = start(1, k2, vec![a.ticket()]).await;
    removed
        .put("from-removed", b"should not arrive")
        .await
        .unwrap();
    a.put("after", b"members only").await.unwrap();
    wait_until("B gets writes made after the rotation", || async {
        b.get("after").await.unwrap().is_some()
    })
    .await;
    // The removed member (still on the old key) keeps trying: it never gets through.
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT * 4;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(removed.get("after").await.unwrap(), None);
        assert_eq!(a.get("from-removed").await.unwrap(), None);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // What it had before the rotation it keeps: rotation cannot take data back.
    assert!(removed.get("before").await.unwrap().is_some());
    for n in [a, b, removed] {
        n.shutdown().await.unwrap();
    }
}
