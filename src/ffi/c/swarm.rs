//! `MurmurSwarm`: open, start, read and write, leader, peers, shutdown, free.
//!
//! Each operation that waits has a blocking form and an `_async` form that returns at once and
//! reports through a callback on a library thread.

use std::{
    ffi::{c_char, c_void},
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use futures_lite::FutureExt;

use super::config::MurmurConfig;
use super::{
    block_on, bytes_arg, check_out, config::CONFIGS, guard, in_callback, record, rt, str_arg,
    strings_to_c, to_cstring, write_out, FfiError, FfiResult, MurmurBytes, MurmurStatus, UserData,
};
use crate::{PathKind, Swarm};

/// An open swarm (an opaque handle). Safe to use from several threads at once. Stop it with
/// `murmur_shutdown` and then release it with `murmur_free`.
pub struct MurmurSwarm {
    pub(crate) swarm: Swarm,
    closed: AtomicBool,
}

pub(crate) static SWARMS: super::handles::Registry<MurmurSwarm> =
    super::handles::Registry::new("MurmurSwarm");

impl MurmurSwarm {
    /// Fails with MURMUR_ERR_CLOSED once shutdown was requested.
    pub(crate) fn check_open(&self) -> FfiResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(crate::Error::Closed.into())
        } else {
            Ok(())
        }
    }
}

/// The live swarm behind a handle, still open.
fn open_swarm(swarm: *const MurmurSwarm) -> FfiResult<Arc<MurmurSwarm>> {
    let s = SWARMS.get(swarm)?;
    s.check_open()?;
    Ok(s)
}

/// Reports the end of an operation: `status` is MURMUR_OK or an error code, and during the
/// call `murmur_last_error_message()` gives the error's message. Runs on a library thread.
pub type MurmurDoneCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, status: MurmurStatus)>;

/// Reports the end of `murmur_get_async`. On MURMUR_OK, `found` says whether the key holds a
/// value, and `value`/`len` are that value; the buffer belongs to the library and is valid
/// only during the call (copy it to keep it). Runs on a library thread.
pub type MurmurGetCallback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: MurmurStatus,
        found: bool,
        value: *const u8,
        len: usize,
    ),
>;

/// Runs `fut` on the runtime and hands its result to `report` inside a callback context (a
/// panic becomes MURMUR_ERR_PANIC).
fn spawn_reporting<T, F>(
    fut: F,
    report: impl FnOnce(FfiResult<T>) + Send + 'static,
) -> FfiResult<()>
where
    T: Send + 'static,
    F: Future<Output = FfiResult<T>> + Send + 'static,
{
    rt()?.spawn(async move {
        let result = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(FfiError::new(
                MurmurStatus::MurmurErrPanic,
                "internal error (panic) in murmur",
            )),
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            in_callback(|| report(result))
        }));
    });
    Ok(())
}

/// Spawns an operation that reports through a `MurmurDoneCallback`.
fn spawn_done<F>(fut: F, cb: MurmurDoneCallback, user_data: *mut c_void) -> FfiResult<()>
where
    F: Future<Output = FfiResult<()>> + Send + 'static,
{
    let cb = cb.ok_or_else(|| FfiError::null("callback"))?;
    let ud = UserData(user_data);
    spawn_reporting(fut, move |r| {
        let ud = ud;
        let status = record(&r);
        // SAFETY: the caller's callback, with the caller's user_data.
        unsafe { cb(ud.0, status) }
    })
}

/// Opens a swarm with the options of `config` (copied: the config can be freed or reused
/// afterwards) and stores its handle in `*out_swarm`. Opening reads the database; networking
/// begins with `murmur_start`. Blocking.
///
/// Errors: MURMUR_ERR_LOCKED (directory in use), MURMUR_ERR_CORRUPT, MURMUR_ERR_STORAGE,
/// MURMUR_ERR_CONFIG, MURMUR_ERR_INVALID_TICKET, MURMUR_ERR_NETWORK, and the argument errors.
///
/// # Safety
/// `out_swarm` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn murmur_open(
    config: *const MurmurConfig,
    out_swarm: *mut *mut MurmurSwarm,
) -> MurmurStatus {
    guard(|| {
        check_out(out_swarm, "out_swarm")?;
        let builder = CONFIGS.get(config)?.builder();
        let swarm = block_on("murmur_open", builder.build())??;
        let h = SWARMS.insert(MurmurSwarm {
            swarm,
            closed: AtomicBool::new(false),
        });
        // SAFETY: checked non-NULL; valid per the contract.
        unsafe { write_out(out_swarm, h) };
        Ok(())
    })
}

/// Begins networking and leader election. Calling it again does nothing. Blocking.
///
/// # Safety
/// `swarm` is NULL or a pointer returned by `murmur_open`.
#[no_mangle]
pub unsafe extern "C" fn murmur_start(swarm: *const MurmurSwarm) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        block_on("murmur_start", s.swarm.start())??;
        Ok(())
    })
}

/// `murmur_start` without blocking: returns at once and calls `callback` exactly once with the
/// result, unless it itself returns an error (then the callback is never called).
///
/// # Safety
/// `callback` is NULL or a valid function; `user_data` is passed to it untouched and must be
/// usable from another thread.
#[no_mangle]
pub unsafe extern "C" fn murmur_start_async(
    swarm: *const MurmurSwarm,
    callback: MurmurDoneCallback,
    user_data: *mut c_void,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        spawn_done(
            async move { Ok(s.swarm.start().await?) },
            callback,
            user_data,
        )
    })
}

/// Sets `key` (NUL-terminated UTF-8) to the `len` bytes at `value` (NULL allowed when `len` is
/// 0). Returns once the write is durable locally; it reaches connected peers at once and
/// others when they reconnect. Blocking.
///
/// Errors: MURMUR_ERR_INVALID_KEY, MURMUR_ERR_INVALID_UTF8, MURMUR_ERR_VALUE_TOO_LARGE,
/// MURMUR_ERR_CLOSED, MURMUR_ERR_STORAGE, and the argument errors.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `value` is NULL or points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn murmur_put(
    swarm: *const MurmurSwarm,
    key: *const c_char,
    value: *const u8,
    len: usize,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let key = unsafe { str_arg(key, "key") }?;
        // SAFETY: per the function's contract.
        let value = unsafe { bytes_arg(value, len, "value") }?;
        block_on("murmur_put", s.swarm.put(key, value))??;
        Ok(())
    })
}

/// `murmur_put` without blocking. The key and value are copied before it returns. Calls
/// `callback` exactly once with the result, unless it itself returns an error (then never).
///
/// # Safety
/// As `murmur_put`; `callback` is NULL or a valid function; `user_data` must be usable from
/// another thread.
#[no_mangle]
pub unsafe extern "C" fn murmur_put_async(
    swarm: *const MurmurSwarm,
    key: *const c_char,
    value: *const u8,
    len: usize,
    callback: MurmurDoneCallback,
    user_data: *mut c_void,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let key = unsafe { str_arg(key, "key") }?.to_string();
        if len > super::MURMUR_MAX_VALUE_SIZE_LIMIT {
            // Refused before copying (the configured limit is checked by the core).
            return Err(crate::Error::ValueTooLarge {
                size: len,
                max: super::MURMUR_MAX_VALUE_SIZE_LIMIT,
            }
            .into());
        }
        // SAFETY: per the function's contract.
        let value = unsafe { bytes_arg(value, len, "value") }?.to_vec();
        spawn_done(
            async move { Ok(s.swarm.put(&key, value).await?) },
            callback,
            user_data,
        )
    })
}

/// Reads `key` from the local replica. On MURMUR_OK, `*out_found` says whether the key holds
/// a value and `*out_value` is a copy of it (`{NULL, 0}` when not found), to be freed with
/// `murmur_bytes_free`. Blocking (briefly: reads are local).
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; the output pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_get(
    swarm: *const MurmurSwarm,
    key: *const c_char,
    out_value: *mut MurmurBytes,
    out_found: *mut bool,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let key = unsafe { str_arg(key, "key") }?;
        check_out(out_value, "out_value")?;
        check_out(out_found, "out_found")?;
        let v = block_on("murmur_get", s.swarm.get(key))??;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            write_out(out_found, v.is_some());
            write_out(out_value, MurmurBytes::from_vec(v.unwrap_or_default()));
        }
        Ok(())
    })
}

/// `murmur_get` without blocking. Calls `callback` exactly once with the result, unless it
/// itself returns an error (then never).
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `callback` is NULL or a valid function;
/// `user_data` must be usable from another thread.
#[no_mangle]
pub unsafe extern "C" fn murmur_get_async(
    swarm: *const MurmurSwarm,
    key: *const c_char,
    callback: MurmurGetCallback,
    user_data: *mut c_void,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let key = unsafe { str_arg(key, "key") }?.to_string();
        let cb = callback.ok_or_else(|| FfiError::null("callback"))?;
        let ud = UserData(user_data);
        spawn_reporting(
            async move { Ok(s.swarm.get(&key).await?) },
            move |r: FfiResult<Option<Vec<u8>>>| {
                let ud = ud;
                let (status, value) = match r {
                    Ok(v) => (record(&Ok(())), v),
                    Err(e) => (record(&Err(e)), None),
                };
                let (ptr, len) = match &value {
                    Some(v) if !v.is_empty() => (v.as_ptr(), v.len()),
                    _ => (std::ptr::null(), 0),
                };
                // SAFETY: the caller's callback, with the caller's user_data; the buffer
                // outlives the call.
                unsafe { cb(ud.0, status, value.is_some(), ptr, len) }
            },
        )
    })
}

/// Deletes `key` (deleting an absent key succeeds and changes nothing). Durable on return.
/// Blocking.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn murmur_delete(
    swarm: *const MurmurSwarm,
    key: *const c_char,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let key = unsafe { str_arg(key, "key") }?;
        block_on("murmur_delete", s.swarm.delete(key))??;
        Ok(())
    })
}

/// `murmur_delete` without blocking. Calls `callback` exactly once with the result, unless it
/// itself returns an error (then never).
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `callback` is NULL or a valid function;
/// `user_data` must be usable from another thread.
#[no_mangle]
pub unsafe extern "C" fn murmur_delete_async(
    swarm: *const MurmurSwarm,
    key: *const c_char,
    callback: MurmurDoneCallback,
    user_data: *mut c_void,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let key = unsafe { str_arg(key, "key") }?.to_string();
        spawn_done(
            async move { Ok(s.swarm.delete(&key).await?) },
            callback,
            user_data,
        )
    })
}

/// The keys of the local replica that start with `prefix` ("" for all), in byte order: an
/// array of `*out_len` strings in `*out_keys` (NULL when empty), to be freed with
/// `murmur_strings_free(keys, len)`. Blocking (briefly).
///
/// # Safety
/// `prefix` is NULL or a NUL-terminated string; the output pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_keys(
    swarm: *const MurmurSwarm,
    prefix: *const c_char,
    out_keys: *mut *mut *mut c_char,
    out_len: *mut usize,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        // SAFETY: per the function's contract.
        let prefix = unsafe { str_arg(prefix, "prefix") }?;
        check_out(out_keys, "out_keys")?;
        check_out(out_len, "out_len")?;
        let keys = block_on("murmur_keys", s.swarm.keys(prefix))??;
        let (p, n) = strings_to_c(keys);
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            write_out(out_keys, p);
            write_out(out_len, n);
        }
        Ok(())
    })
}

/// The number of keys in the local replica. Blocking (briefly).
///
/// # Safety
/// `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_len(
    swarm: *const MurmurSwarm,
    out_len: *mut usize,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_len, "out_len")?;
        let n = block_on("murmur_len", s.swarm.len())??;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_len, n) };
        Ok(())
    })
}

/// Whether this node is the leader, in `*out_is_leader`. Blocking (briefly).
///
/// # Safety
/// `out_is_leader` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_is_leader(
    swarm: *const MurmurSwarm,
    out_is_leader: *mut bool,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_is_leader, "out_is_leader")?;
        let v = block_on("murmur_is_leader", s.swarm.is_leader())?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_is_leader, v) };
        Ok(())
    })
}

/// The leader's node ID in `*out_leader` (free it with `murmur_string_free`), or NULL when no
/// leader is known (an election is running). Blocking (briefly).
///
/// # Safety
/// `out_leader` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_leader_id(
    swarm: *const MurmurSwarm,
    out_leader: *mut *mut c_char,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_leader, "out_leader")?;
        let v = block_on("murmur_leader_id", s.swarm.leader_id())?;
        let p = v.map_or(std::ptr::null_mut(), |l| to_cstring(&l).into_raw());
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_leader, p) };
        Ok(())
    })
}

/// The current leader's term in `*out_term` (0 before any leader is known): strictly
/// increasing across leader changes, usable as a fencing token. Blocking (briefly).
///
/// # Safety
/// `out_term` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_leader_term(
    swarm: *const MurmurSwarm,
    out_term: *mut u64,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_term, "out_term")?;
        let v = block_on("murmur_leader_term", s.swarm.leader_term())?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_term, v) };
        Ok(())
    })
}

/// This node's ID (hex ed25519 public key, stable across restarts) in `*out_id`; free it with
/// `murmur_string_free`. Does not block: callable from callbacks.
///
/// # Safety
/// `out_id` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_node_id(
    swarm: *const MurmurSwarm,
    out_id: *mut *mut c_char,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_id, "out_id")?;
        let p = to_cstring(&s.swarm.node_id()).into_raw();
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_id, p) };
        Ok(())
    })
}

/// What another node passes to `murmur_config_add_bootstrap` to join through this one (node
/// ID and current addresses), in `*out_ticket`; free it with `murmur_string_free`. Does not
/// block: callable from callbacks.
///
/// # Safety
/// `out_ticket` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_ticket(
    swarm: *const MurmurSwarm,
    out_ticket: *mut *mut c_char,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_ticket, "out_ticket")?;
        let p = to_cstring(&s.swarm.ticket()).into_raw();
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out_ticket, p) };
        Ok(())
    })
}

/// How a peer is reached (`MurmurPeerInfo::path`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MurmurPathKind {
    /// Not connected.
    MurmurPathNone = 0,
    /// A direct UDP path (possibly after NAT traversal).
    MurmurPathDirect = 1,
    /// Through a relay server.
    MurmurPathRelayed = 2,
}

/// A peer this node knows (see `murmur_peers`).
#[repr(C)]
#[derive(Debug)]
pub struct MurmurPeerInfo {
    /// The peer's node ID (owned by the array; freed by `murmur_peers_free`).
    pub id: *mut c_char,
    /// Whether an authenticated connection is up.
    pub connected: bool,
    /// How it is reached.
    pub path: MurmurPathKind,
    /// Round-trip time in microseconds, or -1 when unknown.
    pub rtt_us: i64,
    /// Whether `clock_offset_ms` holds a measurement.
    pub clock_offset_known: bool,
    /// How far the peer's wall clock is ahead of this node's, in milliseconds (negative:
    /// behind); 0 when `clock_offset_known` is false.
    pub clock_offset_ms: i64,
}

/// The peers this node knows: an array of `*out_len` entries in `*out_peers` (NULL when
/// empty), to be freed with `murmur_peers_free(peers, len)`. Blocking (briefly).
///
/// # Safety
/// The output pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn murmur_peers(
    swarm: *const MurmurSwarm,
    out_peers: *mut *mut MurmurPeerInfo,
    out_len: *mut usize,
) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        check_out(out_peers, "out_peers")?;
        check_out(out_len, "out_len")?;
        let peers = block_on("murmur_peers", s.swarm.peers())?;
        let (p, n) = if peers.is_empty() {
            (std::ptr::null_mut(), 0)
        } else {
            let b: Box<[MurmurPeerInfo]> = peers
                .into_iter()
                .map(|p| MurmurPeerInfo {
                    id: to_cstring(&p.id).into_raw(),
                    connected: p.connected,
                    path: match p.path {
                        PathKind::Direct => MurmurPathKind::MurmurPathDirect,
                        PathKind::Relayed => MurmurPathKind::MurmurPathRelayed,
                        PathKind::None => MurmurPathKind::MurmurPathNone,
                    },
                    rtt_us: p
                        .rtt
                        .map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
                    clock_offset_known: p.clock_offset_ms.is_some(),
                    clock_offset_ms: p.clock_offset_ms.unwrap_or(0),
                })
                .collect();
            let n = b.len();
            (Box::into_raw(b) as *mut MurmurPeerInfo, n)
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            write_out(out_peers, p);
            write_out(out_len, n);
        }
        Ok(())
    })
}

/// Frees an array returned by `murmur_peers`, with its strings. NULL is ignored.
///
/// # Safety
/// `peers` and `len` were returned together by `murmur_peers` and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn murmur_peers_free(peers: *mut MurmurPeerInfo, len: usize) {
    super::guard_or((), || {
        if peers.is_null() {
            return;
        }
        // SAFETY: a boxed slice of `len` entries allocated by murmur_peers.
        let b = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(peers, len)) };
        for p in b.iter() {
            if !p.id.is_null() {
                // SAFETY: from CString::into_raw in murmur_peers.
                drop(unsafe { std::ffi::CString::from_raw(p.id) });
            }
        }
    })
}

/// Folds the stored change history into a snapshot now (this also happens automatically).
/// Blocking.
///
/// # Safety
/// `swarm` is NULL or a pointer returned by `murmur_open`.
#[no_mangle]
pub unsafe extern "C" fn murmur_compact(swarm: *const MurmurSwarm) -> MurmurStatus {
    guard(|| {
        let s = open_swarm(swarm)?;
        block_on("murmur_compact", s.swarm.compact())??;
        Ok(())
    })
}

/// Stops gracefully: closes connections (peers see this node leave at once), persists sync
/// state, closes the database and releases the data directory. Event subscriptions end. Every
/// call afterwards fails with MURMUR_ERR_CLOSED (a second shutdown too); the handle must still
/// be freed with `murmur_free`. Blocking.
///
/// # Safety
/// `swarm` is NULL or a pointer returned by `murmur_open`.
#[no_mangle]
pub unsafe extern "C" fn murmur_shutdown(swarm: *const MurmurSwarm) -> MurmurStatus {
    guard(|| {
        let s = SWARMS.get(swarm)?;
        // Refuse before marking the handle closed.
        super::check_blocking("murmur_shutdown")?;
        if s.closed.swap(true, Ordering::AcqRel) {
            return Err(crate::Error::Closed.into());
        }
        block_on("murmur_shutdown", s.swarm.shutdown())??;
        Ok(())
    })
}

/// `murmur_shutdown` without blocking. Calls `callback` exactly once with the result, unless
/// it itself returns an error (then never).
///
/// # Safety
/// `callback` is NULL or a valid function; `user_data` must be usable from another thread.
#[no_mangle]
pub unsafe extern "C" fn murmur_shutdown_async(
    swarm: *const MurmurSwarm,
    callback: MurmurDoneCallback,
    user_data: *mut c_void,
) -> MurmurStatus {
    guard(|| {
        let s = SWARMS.get(swarm)?;
        if callback.is_none() {
            return Err(FfiError::null("callback"));
        }
        if s.closed.swap(true, Ordering::AcqRel) {
            return Err(crate::Error::Closed.into());
        }
        spawn_done(
            async move { Ok(s.swarm.shutdown().await?) },
            callback,
            user_data,
        )
    })
}

/// Releases a swarm handle. NULL is ignored (MURMUR_OK); a handle already freed gives
/// MURMUR_ERR_INVALID_HANDLE. A swarm not shut down is stopped in the background (call
/// `murmur_shutdown` first to wait for it). Operations still running finish normally. Does
/// not block: callable from callbacks.
///
/// # Safety
/// `swarm` is NULL or a pointer returned by `murmur_open`.
#[no_mangle]
pub unsafe extern "C" fn murmur_free(swarm: *mut MurmurSwarm) -> MurmurStatus {
    guard(|| {
        if swarm.is_null() {
            return Ok(());
        }
        let s = SWARMS.remove(swarm)?;
        let rt = rt()?;
        if !s.closed.swap(true, Ordering::AcqRel) {
            rt.spawn(async move {
                let _ = s.swarm.shutdown().await;
            });
        } else {
            // Dropped inside the runtime context: the core may spawn cleanup tasks.
            let _enter = rt.enter();
            drop(s);
        }
        Ok(())
    })
}
