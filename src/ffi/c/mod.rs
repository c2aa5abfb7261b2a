//! The C ABI (see `include/murmur.h`, generated from this module by cbindgen in `build.rs`).
//!
//! Conventions, after yffi (y-crdt) and iroh-c-ffi:
//! - opaque handles ([`MurmurConfig`], [`MurmurSwarm`], [`MurmurSubscription`]) kept in
//!   registries, so a NULL, freed or foreign pointer is refused with an error code instead of
//!   being dereferenced;
//! - every fallible function returns a [`MurmurStatus`], and the message of the last failure on
//!   the calling thread is available from [`murmur_last_error_message`];
//! - every string or buffer the library allocates has its own free function;
//! - no panic crosses the boundary: every entry point runs under `catch_unwind`;
//! - blocking functions run on the library's runtime (`crate::ffi::runtime`); called from a
//!   callback (or any runtime thread) they return [`MurmurStatus::MurmurErrWouldDeadlock`].

mod config;
mod events;
mod handles;
mod swarm;
#[cfg(test)]
mod tests;

pub use config::*;
pub use events::*;
pub use swarm::*;

use std::{
    cell::{Cell, RefCell},
    ffi::{c_char, c_void, CStr, CString},
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
};

use crate::Error;

/// Length in bytes of a swarm key (see `murmur_config_set_swarm_key`).
pub const MURMUR_SWARM_KEY_LEN: usize = 32;
/// Longest key in bytes.
pub const MURMUR_MAX_KEY_LEN: usize = 1024;
/// Default largest value in bytes (1 MiB); see `murmur_config_set_max_value_size`.
pub const MURMUR_DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;
/// Highest value size limit that can be configured (8 MiB).
pub const MURMUR_MAX_VALUE_SIZE_LIMIT: usize = 8 << 20;

// The C constants must follow the core's.
const _: () = assert!(MURMUR_MAX_KEY_LEN == crate::MAX_KEY_LEN);
const _: () = assert!(MURMUR_DEFAULT_MAX_VALUE_SIZE == crate::DEFAULT_MAX_VALUE_SIZE);
const _: () = assert!(MURMUR_MAX_VALUE_SIZE_LIMIT == crate::MAX_VALUE_SIZE_LIMIT);

/// Result of every fallible call. `MURMUR_OK` is 0; on any other value,
/// `murmur_last_error_message()` on the same thread says what went wrong.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum MurmurStatus {
    /// Success.
    MurmurOk = 0,
    /// A required pointer argument (handle, string, output pointer, callback) was NULL.
    MurmurErrNullArg = 1,
    /// A string argument is not valid UTF-8.
    MurmurErrInvalidUtf8 = 2,
    /// The handle is not a live handle of this library (already freed, or never created by it).
    MurmurErrInvalidHandle = 3,
    /// A blocking function was called from a callback or another library runtime thread, where
    /// it would deadlock; use the `_async` variant there.
    MurmurErrWouldDeadlock = 4,
    /// The library panicked internally (a bug); the call had no effect or an unknown effect.
    MurmurErrPanic = 5,
    /// The library's runtime could not be started (threads or I/O driver unavailable).
    MurmurErrRuntime = 6,
    /// The key is empty, longer than `MURMUR_MAX_KEY_LEN` bytes, or contains NUL.
    MurmurErrInvalidKey = 10,
    /// The value is larger than the configured maximum.
    MurmurErrValueTooLarge = 11,
    /// The swarm was shut down; open a new one to continue.
    MurmurErrClosed = 12,
    /// Another instance has the data directory open.
    MurmurErrLocked = 13,
    /// The database in the data directory is corrupt or not a Murmur database.
    MurmurErrCorrupt = 14,
    /// A filesystem or SQLite operation failed.
    MurmurErrStorage = 15,
    /// A configuration option or argument is not acceptable.
    MurmurErrConfig = 16,
    /// A bootstrap ticket or node address could not be parsed.
    MurmurErrInvalidTicket = 17,
    /// Networking could not be set up.
    MurmurErrNetwork = 18,
    /// The operation needs `murmur_start` first.
    MurmurErrNotStarted = 19,
    /// This node's clock is further off its peers' than the maximum clock offset: writes are
    /// refused until the system clock is fixed.
    MurmurErrClockSkew = 20,
    /// An error this version of the C ABI has no specific code for (see the message).
    MurmurErrOther = 99,
}

/// An error on its way to the C caller: a status code and its message.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) status: MurmurStatus,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(status: MurmurStatus, message: impl Into<String>) -> Self {
        FfiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        Self::new(MurmurStatus::MurmurErrNullArg, format!("{what} is NULL"))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        use MurmurStatus::*;
        let status = match &e {
            Error::InvalidKey { .. } => MurmurErrInvalidKey,
            Error::ValueTooLarge { .. } => MurmurErrValueTooLarge,
            Error::Closed => MurmurErrClosed,
            Error::Locked { .. } => MurmurErrLocked,
            Error::Corrupt { .. } => MurmurErrCorrupt,
            Error::Storage(_) => MurmurErrStorage,
            Error::Config(_) => MurmurErrConfig,
            Error::InvalidTicket { .. } => MurmurErrInvalidTicket,
            Error::Network(_) => MurmurErrNetwork,
            Error::NotStarted => MurmurErrNotStarted,
            Error::ClockSkew { .. } => MurmurErrClockSkew,
            #[allow(unreachable_patterns)] // Error is non_exhaustive
            _ => MurmurErrOther,
        };
        FfiError::new(status, e.to_string())
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// A C string from a Rust string; interior NULs (never produced by the core) become U+FFFD.
pub(crate) fn to_cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| {
        CString::new(s.replace('\0', "\u{FFFD}")).unwrap_or_else(|_| CString::default())
    })
}

fn set_last_error(message: &str) {
    let c = to_cstring(message);
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = None);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs the body of an entry point: catches panics, records the error message of a failure on
/// this thread (or clears it on success) and returns the status code.
pub(crate) fn guard(f: impl FnOnce() -> FfiResult<()>) -> MurmurStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            clear_last_error();
            MurmurStatus::MurmurOk
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(p) => {
            set_last_error(&format!(
                "internal error (panic) in murmur: {}",
                panic_message(&*p)
            ));
            MurmurStatus::MurmurErrPanic
        }
    }
}

/// Like [`guard`] for functions that cannot report a status: a panic is swallowed (after
/// recording its message) and `fallback` returned.
pub(crate) fn guard_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            set_last_error(&format!(
                "internal error (panic) in murmur: {}",
                panic_message(&*p)
            ));
            fallback
        }
    }
}

/// The library runtime, as an [`FfiResult`].
pub(crate) fn rt() -> FfiResult<&'static tokio::runtime::Runtime> {
    super::runtime().map_err(|e| {
        FfiError::new(
            MurmurStatus::MurmurErrRuntime,
            format!("cannot start the murmur runtime: {e}"),
        )
    })
}

/// Whether blocking here could deadlock: inside a callback, or on any tokio runtime thread
/// (where `block_on` is not allowed).
pub(crate) fn on_callback_thread() -> bool {
    IN_CALLBACK.with(|c| c.get()) || tokio::runtime::Handle::try_current().is_ok()
}

/// Runs `f` to completion on the library runtime, refusing to do so where it would deadlock.
pub(crate) fn block_on<F: Future>(what: &str, f: F) -> FfiResult<F::Output> {
    check_blocking(what)?;
    Ok(rt()?.block_on(f))
}

/// Refuses to block where it would deadlock (see [`on_callback_thread`]).
pub(crate) fn check_blocking(what: &str) -> FfiResult<()> {
    if on_callback_thread() {
        return Err(FfiError::new(
            MurmurStatus::MurmurErrWouldDeadlock,
            format!(
                "{what} blocks and was called from a murmur callback or runtime thread, where it \
                 would deadlock; use its _async variant or call it from another thread"
            ),
        ));
    }
    Ok(())
}

/// Runs a user callback with this thread marked as a callback thread, so blocking calls made by
/// the callback fail fast with `MURMUR_ERR_WOULD_DEADLOCK`.
pub(crate) fn in_callback<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(IN_CALLBACK.with(|c| c.replace(true)));
    f()
}

/// Records `status`'s message as this thread's last error before a callback reports it, so
/// the callback can read it with `murmur_last_error_message()`.
pub(crate) fn record(result: &FfiResult<()>) -> MurmurStatus {
    match result {
        Ok(()) => {
            clear_last_error();
            MurmurStatus::MurmurOk
        }
        Err(e) => {
            set_last_error(&e.message);
            e.status
        }
    }
}

/// The caller's `void *user_data`, passed back untouched on a library thread.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);
// SAFETY: the header requires user_data to be usable from the library's threads; the library
// never dereferences it.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        FfiError::new(
            MurmurStatus::MurmurErrInvalidUtf8,
            format!("{what} is not valid UTF-8 ({e})"),
        )
    })
}

/// Reads a `(pointer, length)` byte buffer argument; NULL is accepted for an empty buffer.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that stay valid during the call.
pub(crate) unsafe fn bytes_arg<'a>(p: *const u8, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if p.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(FfiError::null(what));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::new(
            MurmurStatus::MurmurErrValueTooLarge,
            format!("{what} length {len} is larger than any buffer can be"),
        ));
    }
    // SAFETY: non-NULL, `len` readable bytes per the caller's contract, len <= isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Writes `v` through an output pointer, refusing NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, v: T) {
    // SAFETY: checked non-NULL by the callers (see `check_out`), valid per the contract.
    unsafe { out.write(v) }
}

/// Refuses a NULL output pointer.
pub(crate) fn check_out<T>(out: *mut T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(())
    }
}

/// A byte buffer allocated by the library. Free it with `murmur_bytes_free`.
#[repr(C)]
#[derive(Debug)]
pub struct MurmurBytes {
    /// The bytes (NULL when `len` is 0 and nothing was allocated).
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
}

impl MurmurBytes {
    pub(crate) fn empty() -> Self {
        MurmurBytes {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }

    pub(crate) fn from_vec(v: Vec<u8>) -> Self {
        if v.is_empty() {
            return Self::empty();
        }
        let b = v.into_boxed_slice();
        let len = b.len();
        MurmurBytes {
            ptr: Box::into_raw(b) as *mut u8,
            len,
        }
    }
}

/// The message of the last failed murmur call on this thread, or "" if the last call
/// succeeded. Never NULL. The string belongs to the library and stays valid until the next
/// murmur call on this thread; do not free it.
///
/// In a completion callback, it holds the message of the status the callback received.
#[no_mangle]
pub extern "C" fn murmur_last_error_message() -> *const c_char {
    guard_or(c"".as_ptr(), || {
        LAST_ERROR.with(|e| match &*e.borrow() {
            Some(c) => c.as_ptr(),
            None => c"".as_ptr(),
        })
    })
}

/// A static, human-readable name of a status code (for example "MURMUR_ERR_CLOSED"). Never NULL;
/// do not free it.
#[no_mangle]
pub extern "C" fn murmur_status_name(status: MurmurStatus) -> *const c_char {
    use MurmurStatus::*;
    let s: &'static CStr = match status {
        MurmurOk => c"MURMUR_OK",
        MurmurErrNullArg => c"MURMUR_ERR_NULL_ARG",
        MurmurErrInvalidUtf8 => c"MURMUR_ERR_INVALID_UTF8",
        MurmurErrInvalidHandle => c"MURMUR_ERR_INVALID_HANDLE",
        MurmurErrWouldDeadlock => c"MURMUR_ERR_WOULD_DEADLOCK",
        MurmurErrPanic => c"MURMUR_ERR_PANIC",
        MurmurErrRuntime => c"MURMUR_ERR_RUNTIME",
        MurmurErrInvalidKey => c"MURMUR_ERR_INVALID_KEY",
        MurmurErrValueTooLarge => c"MURMUR_ERR_VALUE_TOO_LARGE",
        MurmurErrClosed => c"MURMUR_ERR_CLOSED",
        MurmurErrLocked => c"MURMUR_ERR_LOCKED",
        MurmurErrCorrupt => c"MURMUR_ERR_CORRUPT",
        MurmurErrStorage => c"MURMUR_ERR_STORAGE",
        MurmurErrConfig => c"MURMUR_ERR_CONFIG",
        MurmurErrInvalidTicket => c"MURMUR_ERR_INVALID_TICKET",
        MurmurErrNetwork => c"MURMUR_ERR_NETWORK",
        MurmurErrNotStarted => c"MURMUR_ERR_NOT_STARTED",
        MurmurErrClockSkew => c"MURMUR_ERR_CLOCK_SKEW",
        MurmurErrOther => c"MURMUR_ERR_OTHER",
    };
    s.as_ptr()
}

/// The library version (for example "0.1.0"). Never NULL; do not free it.
#[no_mangle]
pub extern "C" fn murmur_version() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    V.as_ptr()
}

/// Frees a string returned by the library (`murmur_node_id`, `murmur_ticket`,
/// `murmur_leader_id`). NULL is ignored. Freeing a string twice, or a string the library did
/// not allocate, is undefined behaviour.
///
/// # Safety
/// `s` is NULL or a string returned by this library and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn murmur_string_free(s: *mut c_char) {
    guard_or((), || {
        if !s.is_null() {
            // SAFETY: allocated by CString::into_raw in this library, per the contract.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

/// Frees a buffer returned by the library (`murmur_get`). A buffer with a NULL `ptr` is
/// ignored. Freeing a buffer twice is undefined behaviour.
///
/// # Safety
/// `bytes` was returned by this library and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn murmur_bytes_free(bytes: MurmurBytes) {
    guard_or((), || {
        if !bytes.ptr.is_null() {
            // SAFETY: allocated by MurmurBytes::from_vec (a boxed slice of `len` bytes).
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes.ptr, bytes.len))
            });
        }
    })
}

/// Frees an array of strings returned by the library (`murmur_keys`), with its strings. NULL
/// is ignored.
///
/// # Safety
/// `strings` and `len` were returned together by this library and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn murmur_strings_free(strings: *mut *mut c_char, len: usize) {
    guard_or((), || {
        if strings.is_null() {
            return;
        }
        // SAFETY: a boxed slice of `len` CString pointers allocated by this library.
        let b = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(strings, len)) };
        for &s in b.iter() {
            if !s.is_null() {
                // SAFETY: each from CString::into_raw.
                drop(unsafe { CString::from_raw(s) });
            }
        }
    })
}

/// Boxes strings as a C array of C strings (NULL when empty).
pub(crate) fn strings_to_c(v: Vec<String>) -> (*mut *mut c_char, usize) {
    if v.is_empty() {
        return (std::ptr::null_mut(), 0);
    }
    let b: Box<[*mut c_char]> = v.iter().map(|s| to_cstring(s).into_raw()).collect();
    let len = b.len();
    (Box::into_raw(b) as *mut *mut c_char, len)
}
