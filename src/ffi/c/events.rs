//! Event subscriptions: a task per subscription that calls the caller's callback.

use std::{
    cell::Cell,
    ffi::{c_char, c_void, CString},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use super::swarm::MurmurSwarm;
use super::{
    check_out, guard, handles::Registry, in_callback, rt, swarm::SWARMS, to_cstring, write_out,
    FfiError, MurmurStatus, UserData,
};
use crate::Event;

/// What happened (`MurmurEvent::kind`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MurmurEventKind {
    /// A key now holds a new value (`key`, `value`/`value_len`, `origin`).
    MurmurEventPut = 0,
    /// A key was deleted (`key`, `origin`).
    MurmurEventDeleted = 1,
    /// The leader changed (`leader`, NULL while an election runs; `term`).
    MurmurEventLeaderChanged = 2,
    /// A connection to a peer was established (`peer`).
    MurmurEventPeerUp = 3,
    /// The connection to a peer was lost (`peer`).
    MurmurEventPeerDown = 4,
    /// This subscriber fell behind and `missed` events were dropped for it.
    MurmurEventLagged = 5,
    /// This replica entered a new history epoch (`epoch`, `term`, `keys`, `bytes_before`,
    /// `bytes_after`): its stored history was replaced by the live entries.
    MurmurEventCompacted = 6,
    /// This replica could not store something (`error`: what failed). It keeps working and
    /// retries by itself; reported once per run of failures, ended by `STORAGE_RECOVERED`.
    MurmurEventStorageFailed = 7,
    /// A commit succeeded again after `STORAGE_FAILED`.
    MurmurEventStorageRecovered = 8,
}

/// An event, as passed to a `MurmurEventCallback`. Fields that do not apply to `kind` are
/// NULL or 0. Every pointer belongs to the library and is valid only during the callback.
#[repr(C)]
#[derive(Debug)]
pub struct MurmurEvent {
    /// What happened.
    pub kind: MurmurEventKind,
    /// PUT, DELETED: the key.
    pub key: *const c_char,
    /// PUT: the new value (NULL when empty).
    pub value: *const u8,
    /// PUT: the value's length in bytes.
    pub value_len: usize,
    /// PUT, DELETED: the node that wrote it.
    pub origin: *const c_char,
    /// LEADER_CHANGED: the new leader's node ID, or NULL when no leader is known.
    pub leader: *const c_char,
    /// LEADER_CHANGED: the leader's term. COMPACTED: the term of the leader that started the
    /// epoch.
    pub term: u64,
    /// PEER_UP, PEER_DOWN: the peer's node ID.
    pub peer: *const c_char,
    /// LAGGED: how many events were dropped.
    pub missed: u64,
    /// COMPACTED: the epoch's sequence number.
    pub epoch: u64,
    /// COMPACTED: live keys after the switch.
    pub keys: u64,
    /// COMPACTED: bytes of the stored document before.
    pub bytes_before: u64,
    /// COMPACTED: bytes of the stored document after.
    pub bytes_after: u64,
    /// STORAGE_FAILED: what failed, as the storage reported it.
    pub error: *const c_char,
}

/// Receives events. Runs on a library thread, one event at a time per subscription, in order.
pub type MurmurEventCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const MurmurEvent)>;

/// An event subscription (an opaque handle); end it with `murmur_unsubscribe`.
pub struct MurmurSubscription {
    state: Arc<SubState>,
}

struct SubState {
    /// Set by `murmur_unsubscribe`: no callback starts afterwards.
    cancelled: AtomicBool,
    /// Held while a callback runs, so that unsubscribing waits for it.
    delivering: Mutex<()>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) static SUBSCRIPTIONS: Registry<MurmurSubscription> = Registry::new("MurmurSubscription");

thread_local! {
    /// The subscription whose callback runs on this thread (0: none).
    static DELIVERING: Cell<usize> = const { Cell::new(0) };
}

fn id(state: &Arc<SubState>) -> usize {
    Arc::as_ptr(state) as usize
}

/// Calls `cb` with `ev` converted to a `MurmurEvent` (the strings live until it returns).
fn deliver(cb: unsafe extern "C" fn(*mut c_void, *const MurmurEvent), ud: UserData, ev: &Event) {
    let none = std::ptr::null::<c_char>();
    let mut keep: Vec<CString> = Vec::new();
    let mut s = |v: &str| {
        let c = to_cstring(v);
        let p = c.as_ptr();
        keep.push(c);
        p
    };
    let mut out = MurmurEvent {
        kind: MurmurEventKind::MurmurEventPut,
        key: none,
        value: std::ptr::null(),
        value_len: 0,
        origin: none,
        leader: none,
        term: 0,
        peer: none,
        missed: 0,
        epoch: 0,
        keys: 0,
        bytes_before: 0,
        bytes_after: 0,
        error: none,
    };
    match ev {
        Event::Put { key, value, origin } => {
            out.key = s(key);
            out.origin = s(origin);
            if !value.is_empty() {
                out.value = value.as_ptr();
                out.value_len = value.len();
            }
        }
        Event::Deleted { key, origin } => {
            out.kind = MurmurEventKind::MurmurEventDeleted;
            out.key = s(key);
            out.origin = s(origin);
        }
        Event::LeaderChanged { leader, term } => {
            out.kind = MurmurEventKind::MurmurEventLeaderChanged;
            out.leader = leader.as_deref().map_or(none, &mut s);
            out.term = *term;
        }
        Event::PeerUp { peer } => {
            out.kind = MurmurEventKind::MurmurEventPeerUp;
            out.peer = s(peer);
        }
        Event::PeerDown { peer } => {
            out.kind = MurmurEventKind::MurmurEventPeerDown;
            out.peer = s(peer);
        }
        Event::Lagged { missed } => {
            out.kind = MurmurEventKind::MurmurEventLagged;
            out.missed = *missed;
        }
        Event::Compacted {
            epoch,
            term,
            keys,
            bytes_before,
            bytes_after,
        } => {
            out.kind = MurmurEventKind::MurmurEventCompacted;
            out.epoch = *epoch;
            out.term = *term;
            out.keys = *keys;
            out.bytes_before = *bytes_before;
            out.bytes_after = *bytes_after;
        }
        Event::StorageFailed { error } => {
            out.kind = MurmurEventKind::MurmurEventStorageFailed;
            out.error = s(error);
        }
        Event::StorageRecovered => out.kind = MurmurEventKind::MurmurEventStorageRecovered,
    }
    // SAFETY: the caller's callback and user_data; `out` and `keep` outlive the call.
    unsafe { cb(ud.0, &out) };
    drop(keep);
}

/// Subscribes to the swarm's events from now on: every put and delete (local or remote, with
/// its origin), leader changes, peers coming and going. `callback` runs on a library thread,
/// one event at a time and in order for this subscription, until `murmur_unsubscribe` or
/// until the swarm shuts down. The subscription handle goes to `*out_subscription` and must be
/// released with `murmur_unsubscribe`, also after shutdown.
///
/// # Safety
/// `callback` is NULL or a valid function; `user_data` must be usable from another thread;
/// `out_subscription` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_subscribe(
    swarm: *const MurmurSwarm,
    callback: MurmurEventCallback,
    user_data: *mut c_void,
    out_subscription: *mut *mut MurmurSubscription,
) -> MurmurStatus {
    guard(|| {
        let s = SWARMS.get(swarm)?;
        let cb = callback.ok_or_else(|| FfiError::null("callback"))?;
        check_out(out_subscription, "out_subscription")?;
        let rt = rt()?;
        s.check_open()?;
        let mut stream = s.swarm.subscribe();
        drop(s);
        let state = Arc::new(SubState {
            cancelled: AtomicBool::new(false),
            delivering: Mutex::new(()),
            task: Mutex::new(None),
        });
        let st = state.clone();
        let ud = UserData(user_data);
        let task = rt.spawn(async move {
            let ud = ud;
            while let Some(ev) = stream.recv().await {
                let _held = st.delivering.lock().unwrap_or_else(|p| p.into_inner());
                // No callback starts once the process is exiting: the program's statics may
                // already be destroyed (C++ destructors and atexit handlers run in exit()).
                if st.cancelled.load(Ordering::Acquire) || crate::ffi::exiting() {
                    break;
                }
                DELIVERING.with(|d| d.set(id(&st)));
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    in_callback(|| deliver(cb, ud, &ev))
                }));
                DELIVERING.with(|d| d.set(0));
            }
        });
        *state.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        let h = SUBSCRIPTIONS.insert(MurmurSubscription { state });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_subscription, h) };
        Ok(())
    })
}

/// Ends a subscription and releases its handle. Once it returns, the callback is not running
/// and will not be called again (if the callback is running on another thread, this waits for
/// it to return; called from the subscription's own callback, it returns at once and no
/// further call follows). Do not unsubscribe, from a callback, another subscription whose
/// callback may be waiting for this one. NULL is ignored (MURMUR_OK); a subscription already
/// ended gives MURMUR_ERR_INVALID_HANDLE. Callable from callbacks.
///
/// # Safety
/// `subscription` is NULL or a pointer returned by `murmur_subscribe`.
#[no_mangle]
pub unsafe extern "C" fn murmur_unsubscribe(subscription: *mut MurmurSubscription) -> MurmurStatus {
    guard(|| {
        if subscription.is_null() {
            return Ok(());
        }
        let sub = SUBSCRIPTIONS.remove(subscription)?;
        let st = &sub.state;
        st.cancelled.store(true, Ordering::Release);
        if DELIVERING.with(|d| d.get()) != id(st) {
            // Wait for a callback in progress on another thread.
            drop(st.delivering.lock().unwrap_or_else(|p| p.into_inner()));
        }
        if let Some(task) = st.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        Ok(())
    })
}
