//! Unit tests of the C entry points, called as C would call them.

use std::{
    ffi::{c_char, c_void, CStr},
    ptr::{null, null_mut},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::*;
use MurmurStatus::*;

fn last_error() -> String {
    // SAFETY: never NULL, valid until the next call on this thread.
    unsafe { CStr::from_ptr(murmur_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// A config for an offline test node in `dir`.
fn config(dir: &std::path::Path) -> *mut MurmurConfig {
    let cfg = murmur_config_new();
    assert!(!cfg.is_null());
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    unsafe {
        assert_eq!(murmur_config_set_storage_path(cfg, path.as_ptr()), MurmurOk);
        assert_eq!(
            murmur_config_set_swarm_name(cfg, c"ffi-c-tests".as_ptr()),
            MurmurOk
        );
        assert_eq!(
            murmur_config_set_bind_addr(cfg, c"127.0.0.1:0".as_ptr()),
            MurmurOk
        );
        assert_eq!(
            murmur_config_set_relay_mode(cfg, MurmurRelayMode::MurmurRelayDisabled as i32, null()),
            MurmurOk
        );
        assert_eq!(murmur_config_set_local_discovery(cfg, false), MurmurOk);
        assert_eq!(murmur_config_set_heartbeat_ms(cfg, 100), MurmurOk);
        assert_eq!(murmur_config_set_leader_timeout_ms(cfg, 500), MurmurOk);
    }
    cfg
}

fn open(dir: &std::path::Path) -> *mut MurmurSwarm {
    let cfg = config(dir);
    let mut s = null_mut();
    unsafe {
        assert_eq!(murmur_open(cfg, &mut s), MurmurOk, "{}", last_error());
        assert_eq!(murmur_config_free(cfg), MurmurOk);
    }
    s
}

#[test]
fn put_get_delete_round_trip_and_frees() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    unsafe {
        assert_eq!(murmur_start(s), MurmurOk);
        assert_eq!(murmur_put(s, c"k".as_ptr(), b"v1".as_ptr(), 2), MurmurOk);
        let mut v = MurmurBytes::empty();
        let mut found = false;
        assert_eq!(murmur_get(s, c"k".as_ptr(), &mut v, &mut found), MurmurOk);
        assert!(found);
        assert_eq!(std::slice::from_raw_parts(v.ptr, v.len), b"v1");
        murmur_bytes_free(v);
        // Empty values are values.
        assert_eq!(murmur_put(s, c"empty".as_ptr(), null(), 0), MurmurOk);
        let mut v = MurmurBytes::empty();
        assert_eq!(
            murmur_get(s, c"empty".as_ptr(), &mut v, &mut found),
            MurmurOk
        );
        assert!(found && v.ptr.is_null() && v.len == 0);
        let mut keys = null_mut();
        let mut n = 0;
        assert_eq!(murmur_keys(s, c"".as_ptr(), &mut keys, &mut n), MurmurOk);
        assert_eq!(n, 2);
        assert_eq!(CStr::from_ptr(*keys), c"empty");
        murmur_strings_free(keys, n);
        assert_eq!(murmur_delete(s, c"k".as_ptr()), MurmurOk);
        assert_eq!(murmur_get(s, c"k".as_ptr(), &mut v, &mut found), MurmurOk);
        assert!(!found && v.ptr.is_null());
        let mut len = 9;
        assert_eq!(murmur_len(s, &mut len), MurmurOk);
        assert_eq!(len, 1);
        let mut id = null_mut();
        assert_eq!(murmur_node_id(s, &mut id), MurmurOk);
        assert_eq!(CStr::from_ptr(id).to_bytes().len(), 64);
        murmur_string_free(id);
        let mut t = null_mut();
        assert_eq!(murmur_ticket(s, &mut t), MurmurOk);
        murmur_string_free(t);
        assert_eq!(murmur_compact(s), MurmurOk);
        assert_eq!(murmur_shutdown(s), MurmurOk);
        // After shutdown: Closed, a second shutdown too.
        assert_eq!(murmur_put(s, c"k".as_ptr(), null(), 0), MurmurErrClosed);
        assert!(last_error().contains("closed"), "{}", last_error());
        assert_eq!(murmur_shutdown(s), MurmurErrClosed);
        assert_eq!(murmur_node_id(s, &mut id), MurmurErrClosed);
        assert_eq!(murmur_free(s), MurmurOk);
        // After free: the handle is refused, never dereferenced.
        assert_eq!(murmur_free(s), MurmurErrInvalidHandle);
        assert_eq!(murmur_start(s), MurmurErrInvalidHandle);
    }
}

#[test]
fn misuse_gives_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut v = MurmurBytes::empty();
    let mut found = false;
    unsafe {
        assert_eq!(
            murmur_put(null(), c"k".as_ptr(), null(), 0),
            MurmurErrNullArg
        );
        assert_eq!(murmur_put(s, null(), null(), 0), MurmurErrNullArg);
        assert_eq!(murmur_put(s, c"k".as_ptr(), null(), 3), MurmurErrNullArg);
        assert_eq!(
            murmur_get(s, c"k".as_ptr(), null_mut(), &mut found),
            MurmurErrNullArg
        );
        let bad = [0xffu8, 0xfe, 0];
        assert_eq!(
            murmur_put(s, bad.as_ptr() as *const c_char, null(), 0),
            MurmurErrInvalidUtf8
        );
        assert_eq!(
            murmur_get(s, c"".as_ptr(), &mut v, &mut found),
            MurmurErrInvalidKey
        );
        let long = std::ffi::CString::new("x".repeat(MURMUR_MAX_KEY_LEN + 1)).unwrap();
        assert_eq!(murmur_delete(s, long.as_ptr()), MurmurErrInvalidKey);
        let big = vec![0u8; MURMUR_DEFAULT_MAX_VALUE_SIZE + 1];
        assert_eq!(
            murmur_put(s, c"k".as_ptr(), big.as_ptr(), big.len()),
            MurmurErrValueTooLarge
        );
        assert!(last_error().contains("exceeds"), "{}", last_error());
        // A pointer that is not a handle.
        let fake = std::ptr::dangling::<MurmurSwarm>();
        assert_eq!(murmur_start(fake), MurmurErrInvalidHandle);
        assert_eq!(murmur_start_async(s, None, null_mut()), MurmurErrNullArg);
        let cfg = murmur_config_new();
        assert_eq!(
            murmur_config_set_swarm_key(cfg, [0u8; 8].as_ptr(), 8),
            MurmurErrConfig
        );
        assert_eq!(
            murmur_config_set_bind_addr(cfg, c"nope".as_ptr()),
            MurmurErrConfig
        );
        assert_eq!(
            murmur_config_set_relay_mode(cfg, 7, null()),
            MurmurErrConfig
        );
        assert_eq!(murmur_config_set_durability(cfg, -1), MurmurErrConfig);
        assert_eq!(murmur_config_free(cfg), MurmurOk);
        assert_eq!(murmur_config_free(cfg), MurmurErrInvalidHandle);
        assert_eq!(murmur_config_free(null_mut()), MurmurOk);
        // The directory is in use by `s`.
        let cfg = config(dir.path());
        let mut s2 = null_mut();
        assert_eq!(murmur_open(cfg, &mut s2), MurmurErrLocked);
        assert_eq!(murmur_config_free(cfg), MurmurOk);
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(murmur_free(s), MurmurOk);
    }
}

struct Probe {
    results: Mutex<Vec<(MurmurStatus, String)>>,
}

unsafe extern "C" fn done(ud: *mut c_void, status: MurmurStatus) {
    let probe = unsafe { &*(ud as *const Probe) };
    let msg = if status == MurmurOk {
        String::new()
    } else {
        last_error()
    };
    probe.results.lock().unwrap().push((status, msg));
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

static BLOCKED: Mutex<Vec<MurmurStatus>> = Mutex::new(Vec::new());

unsafe extern "C" fn got(
    ud: *mut c_void,
    status: MurmurStatus,
    found: bool,
    v: *const u8,
    n: usize,
) {
    let probe = unsafe { &*(ud as *const Probe) };
    let value = if found && !v.is_null() {
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(v, n) }).into_owned()
    } else {
        format!("found={found}")
    };
    // A blocking call from a callback fails fast instead of deadlocking.
    let s = SWARM_FOR_CB.lock().unwrap().0;
    BLOCKED
        .lock()
        .unwrap()
        .push(unsafe { murmur_put(s, c"x".as_ptr(), null(), 0) });
    probe.results.lock().unwrap().push((status, value));
}

struct SendPtr(*const MurmurSwarm);
unsafe impl Send for SendPtr {}
static SWARM_FOR_CB: Mutex<SendPtr> = Mutex::new(SendPtr(std::ptr::null()));

#[test]
fn async_variants_report_through_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    *SWARM_FOR_CB.lock().unwrap() = SendPtr(s);
    let probe = Arc::new(Probe {
        results: Mutex::new(Vec::new()),
    });
    let ud = Arc::as_ptr(&probe) as *mut c_void;
    let n = |p: &Probe| p.results.lock().unwrap().len();
    unsafe {
        assert_eq!(murmur_start_async(s, Some(done), ud), MurmurOk);
        wait_for("start", || n(&probe) == 1);
        assert_eq!(
            murmur_put_async(s, c"a".as_ptr(), b"1".as_ptr(), 1, Some(done), ud),
            MurmurOk
        );
        wait_for("put", || n(&probe) == 2);
        assert_eq!(murmur_get_async(s, c"a".as_ptr(), Some(got), ud), MurmurOk);
        wait_for("get", || n(&probe) == 3);
        assert_eq!(
            murmur_put_async(s, c"".as_ptr(), null(), 0, Some(done), ud),
            MurmurOk
        );
        wait_for("bad put", || n(&probe) == 4);
        assert_eq!(
            murmur_delete_async(s, c"a".as_ptr(), Some(done), ud),
            MurmurOk
        );
        wait_for("delete", || n(&probe) == 5);
        assert_eq!(murmur_shutdown_async(s, Some(done), ud), MurmurOk);
        wait_for("shutdown", || n(&probe) == 6);
        assert_eq!(murmur_shutdown_async(s, Some(done), ud), MurmurErrClosed);
        assert_eq!(murmur_free(s), MurmurOk);
    }
    let r = probe.results.lock().unwrap().clone();
    assert_eq!(r[0].0, MurmurOk);
    assert_eq!(r[1].0, MurmurOk);
    assert_eq!(r[2], (MurmurOk, "1".to_string()));
    assert_eq!(r[3].0, MurmurErrInvalidKey);
    assert!(r[3].1.contains("invalid key"), "{}", r[3].1);
    assert_eq!(r[4].0, MurmurOk);
    assert_eq!(r[5].0, MurmurOk);
    assert_eq!(*BLOCKED.lock().unwrap(), vec![MurmurErrWouldDeadlock]);
}

struct Events {
    kinds: Mutex<Vec<(MurmurEventKind, String)>>,
}

/// An event recorder and the `user_data` that points to it (valid while `events` lives).
fn recorder() -> (Arc<Events>, *mut c_void) {
    let events = Arc::new(Events {
        kinds: Mutex::new(Vec::new()),
    });
    let ud = Arc::as_ptr(&events) as *mut c_void;
    (events, ud)
}

/// Records each event's kind with its key (or, for STORAGE_FAILED, its error).
unsafe extern "C" fn on_event(ud: *mut c_void, ev: *const MurmurEvent) {
    let events = unsafe { &*(ud as *const Events) };
    let ev = unsafe { &*ev };
    let text = [ev.key, ev.error]
        .into_iter()
        .find(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .unwrap_or_default();
    events.kinds.lock().unwrap().push((ev.kind, text));
}

#[test]
fn subscription_delivers_until_unsubscribed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (events, ud) = recorder();
    unsafe {
        let mut sub = null_mut();
        assert_eq!(murmur_subscribe(s, None, ud, &mut sub), MurmurErrNullArg);
        assert_eq!(murmur_subscribe(s, Some(on_event), ud, &mut sub), MurmurOk);
        assert_eq!(murmur_start(s), MurmurOk);
        assert_eq!(murmur_put(s, c"k".as_ptr(), b"v".as_ptr(), 1), MurmurOk);
        assert_eq!(murmur_delete(s, c"k".as_ptr()), MurmurOk);
        wait_for("put and delete events", || {
            let k = events.kinds.lock().unwrap();
            k.contains(&(MurmurEventKind::MurmurEventPut, "k".into()))
                && k.contains(&(MurmurEventKind::MurmurEventDeleted, "k".into()))
        });
        // A single node becomes leader after one leader timeout.
        wait_for("leader event", || {
            events
                .kinds
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.0 == MurmurEventKind::MurmurEventLeaderChanged)
        });
        let mut leader = false;
        assert_eq!(murmur_is_leader(s, &mut leader), MurmurOk);
        assert!(leader);
        let mut l = null_mut();
        assert_eq!(murmur_leader_id(s, &mut l), MurmurOk);
        assert!(!l.is_null());
        murmur_string_free(l);
        let mut term = 0;
        assert_eq!(murmur_leader_term(s, &mut term), MurmurOk);
        assert!(term >= 1);
        let mut peers = null_mut();
        let mut n = 7;
        assert_eq!(murmur_peers(s, &mut peers, &mut n), MurmurOk);
        assert_eq!(n, 0);
        murmur_peers_free(peers, n);
        assert_eq!(murmur_unsubscribe(sub), MurmurOk);
        let before = events.kinds.lock().unwrap().len();
        assert_eq!(murmur_put(s, c"after".as_ptr(), b"v".as_ptr(), 1), MurmurOk);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(events.kinds.lock().unwrap().len(), before);
        assert_eq!(murmur_unsubscribe(sub), MurmurErrInvalidHandle);
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(
            murmur_subscribe(s, Some(on_event), ud, &mut sub),
            MurmurErrClosed
        );
        assert_eq!(murmur_free(s), MurmurOk);
    }
}

/// A commit that fails (another program holds the database's write lock past the busy
/// timeout) reaches C subscribers as STORAGE_FAILED with the reason, and the next commit that
/// works as STORAGE_RECOVERED.
#[test]
fn storage_failures_and_recovery_are_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (events, ud) = recorder();
    unsafe {
        let mut sub = null_mut();
        assert_eq!(murmur_subscribe(s, Some(on_event), ud, &mut sub), MurmurOk);
        assert_eq!(murmur_start(s), MurmurOk);
        let lock = rusqlite::Connection::open(dir.path().join("murmur.sqlite3")).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert_eq!(
            murmur_put(s, c"k".as_ptr(), b"v".as_ptr(), 1),
            MurmurErrStorage
        );
        let storage = || {
            let k = events.kinds.lock().unwrap();
            k.iter()
                .filter(|e| {
                    matches!(
                        e.0,
                        MurmurEventKind::MurmurEventStorageFailed
                            | MurmurEventKind::MurmurEventStorageRecovered
                    )
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        wait_for("STORAGE_FAILED", || !storage().is_empty());
        lock.execute_batch("ROLLBACK").unwrap();
        assert_eq!(murmur_put(s, c"k".as_ptr(), b"v".as_ptr(), 1), MurmurOk);
        wait_for("STORAGE_RECOVERED", || storage().len() >= 2);
        {
            let k = storage();
            assert_eq!(k[0].0, MurmurEventKind::MurmurEventStorageFailed);
            assert!(k[0].1.contains("locked"), "{:?}", k[0].1);
            assert_eq!(
                k[1],
                (MurmurEventKind::MurmurEventStorageRecovered, String::new())
            );
        }
        assert_eq!(murmur_unsubscribe(sub), MurmurOk);
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(murmur_free(s), MurmurOk);
    }
}

#[test]
fn status_names_and_version() {
    let name = unsafe { CStr::from_ptr(murmur_status_name(MurmurErrWouldDeadlock)) };
    assert_eq!(name, c"MURMUR_ERR_WOULD_DEADLOCK");
    let v = unsafe { CStr::from_ptr(murmur_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

/// A write refused for a skewed clock has its own status code (the skew itself is tested in
/// tests/replication.rs); the bound is a config option, checked at open.
#[test]
fn clock_skew_has_its_own_status_and_the_bound_is_configurable() {
    let name = unsafe { CStr::from_ptr(murmur_status_name(MurmurErrClockSkew)) };
    assert_eq!(name, c"MURMUR_ERR_CLOCK_SKEW");
    let e = super::FfiError::from(crate::Error::ClockSkew {
        offset_ms: 86_400_000,
        max_ms: 60_000,
    });
    assert_eq!(e.status, MurmurErrClockSkew);
    assert!(e.message.contains("fix"), "{}", e.message);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    unsafe {
        assert_eq!(murmur_config_set_max_clock_offset_ms(cfg, 0), MurmurOk);
        let mut s = null_mut();
        assert_eq!(murmur_open(cfg, &mut s), MurmurErrConfig);
        assert!(
            last_error().contains("max_clock_offset"),
            "{}",
            last_error()
        );
        assert_eq!(murmur_config_set_max_clock_offset_ms(cfg, 500), MurmurOk);
        assert_eq!(murmur_open(cfg, &mut s), MurmurOk);
        assert_eq!(murmur_put(s, c"k".as_ptr(), b"v".as_ptr(), 1), MurmurOk);
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(murmur_free(s), MurmurOk);
        assert_eq!(
            murmur_config_set_max_clock_offset_ms(null_mut(), 1),
            MurmurErrNullArg
        );
        murmur_config_free(cfg);
    }
}

/// A callback that takes its time, so that unsubscribing has to wait for it.
struct Slow {
    entered: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
}

unsafe extern "C" fn slow_event(ud: *mut c_void, _ev: *const MurmurEvent) {
    use std::sync::atomic::Ordering::SeqCst;
    let slow = unsafe { &*(ud as *const Slow) };
    slow.entered.fetch_add(1, SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    slow.finished.fetch_add(1, SeqCst);
}

#[test]
fn unsubscribe_waits_for_a_running_callback_and_stops_further_calls() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let slow = Arc::new(Slow {
        entered: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
    });
    let ud = Arc::as_ptr(&slow) as *mut c_void;
    unsafe {
        let mut sub = null_mut();
        assert_eq!(
            murmur_subscribe(s, Some(slow_event), ud, &mut sub),
            MurmurOk
        );
        for k in [c"a", c"b", c"c"] {
            assert_eq!(murmur_put(s, k.as_ptr(), b"v".as_ptr(), 1), MurmurOk);
        }
        wait_for("a callback to start", || slow.entered.load(SeqCst) >= 1);
        assert_eq!(murmur_unsubscribe(sub), MurmurOk);
        // The running callback finished before unsubscribe returned, and no other starts.
        let entered = slow.entered.load(SeqCst);
        assert_eq!(slow.finished.load(SeqCst), entered);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(slow.entered.load(SeqCst), entered);
        assert!(entered < 3, "unsubscribe did not stop delivery");
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(murmur_free(s), MurmurOk);
    }
}

struct SelfUnsub {
    sub: Mutex<usize>,
    calls: std::sync::atomic::AtomicUsize,
    status: Mutex<Option<MurmurStatus>>,
}

unsafe extern "C" fn unsubscribe_self(ud: *mut c_void, _ev: *const MurmurEvent) {
    use std::sync::atomic::Ordering::SeqCst;
    let me = unsafe { &*(ud as *const SelfUnsub) };
    me.calls.fetch_add(1, SeqCst);
    let sub = *me.sub.lock().unwrap() as *mut MurmurSubscription;
    let st = unsafe { murmur_unsubscribe(sub) };
    me.status.lock().unwrap().get_or_insert(st);
}

#[test]
fn a_callback_can_unsubscribe_itself() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let me = Arc::new(SelfUnsub {
        sub: Mutex::new(0),
        calls: AtomicUsize::new(0),
        status: Mutex::new(None),
    });
    let ud = Arc::as_ptr(&me) as *mut c_void;
    unsafe {
        let mut sub = null_mut();
        // Hold the lock so the callback sees the handle (it may run before we store it).
        let mut slot = me.sub.lock().unwrap();
        assert_eq!(
            murmur_subscribe(s, Some(unsubscribe_self), ud, &mut sub),
            MurmurOk
        );
        *slot = sub as usize;
        drop(slot);
        for k in [c"a", c"b", c"c"] {
            assert_eq!(murmur_put(s, k.as_ptr(), b"v".as_ptr(), 1), MurmurOk);
        }
        wait_for("the callback", || me.status.lock().unwrap().is_some());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(*me.status.lock().unwrap(), Some(MurmurOk));
        assert_eq!(me.calls.load(SeqCst), 1);
        assert_eq!(murmur_unsubscribe(sub), MurmurErrInvalidHandle);
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(murmur_free(s), MurmurOk);
    }
}

#[test]
fn one_handle_used_from_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()) as usize;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let s = s as *const MurmurSwarm;
                for i in 0..25 {
                    let key = std::ffi::CString::new(format!("t{t}/{i}")).unwrap();
                    let v = format!("{t}-{i}");
                    unsafe {
                        assert_eq!(murmur_put(s, key.as_ptr(), v.as_ptr(), v.len()), MurmurOk);
                        let mut out = MurmurBytes::empty();
                        let mut found = false;
                        assert_eq!(murmur_get(s, key.as_ptr(), &mut out, &mut found), MurmurOk);
                        assert!(found);
                        assert_eq!(std::slice::from_raw_parts(out.ptr, out.len), v.as_bytes());
                        murmur_bytes_free(out);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = s as *mut MurmurSwarm;
    unsafe {
        let mut n = 0;
        assert_eq!(murmur_len(s, &mut n), MurmurOk);
        assert_eq!(n, 100);
        // Shutdown and free racing with users on other threads: errors, never crashes.
        let user = {
            let s = s as usize;
            std::thread::spawn(move || {
                let s = s as *const MurmurSwarm;
                for _ in 0..200 {
                    let st = murmur_put(s, c"k".as_ptr(), b"v".as_ptr(), 1);
                    assert!(
                        matches!(st, MurmurOk | MurmurErrClosed | MurmurErrInvalidHandle),
                        "{st:?}"
                    );
                }
            })
        };
        assert_eq!(murmur_shutdown(s), MurmurOk);
        assert_eq!(murmur_free(s), MurmurOk);
        user.join().unwrap();
    }
}
