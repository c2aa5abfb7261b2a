//! Foreign-language interfaces: the C ABI ([`c`]) and the uniffi objects ([`uniffi`]) used by
//! the Python, Kotlin and Swift bindings.
//!
//! Foreign callers have no tokio runtime of their own, so the library owns one multi-threaded
//! runtime ([`runtime`]), created on first use and shared by every swarm opened through either
//! interface.

pub mod c;
pub mod uniffi;

use std::{
    cell::Cell,
    sync::atomic::{AtomicBool, Ordering},
};

use once_cell::sync::OnceCell;
use tokio::runtime::Runtime;

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// Set once the host process began to exit: by the C `atexit` handler registered with the
/// runtime (C, C++, the JVM's `exit`), or by a binding's own exit hook (Python's `atexit`,
/// which runs before the interpreter finalizes). From then on no callback into foreign code
/// starts.
static EXITING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread belongs to the library runtime (a worker or a blocking-pool thread).
    static RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the host process began to exit (see [`EXITING`]).
pub(crate) fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// Marks the process as exiting: no callback into foreign code starts afterwards.
pub(crate) fn set_exiting() {
    EXITING.store(true, Ordering::SeqCst);
}

/// Whether the calling thread is one of the library runtime's threads.
pub(crate) fn on_runtime_thread() -> bool {
    RUNTIME_THREAD.with(|t| t.get())
}

extern "C" {
    /// The C library's `atexit` (every platform's C runtime has it).
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

/// Runs at `exit()`: only sets a flag (it may run on a thread that is inside a callback, for
/// example a JVM listener calling `System.exit`, so it must not wait for anything).
extern "C" fn at_exit() {
    set_exiting();
}

/// The library's runtime for foreign callers (created on first use).
pub(crate) fn runtime() -> std::io::Result<&'static Runtime> {
    RUNTIME.get_or_try_init(|| {
        // SAFETY: registers a plain function of this library that only stores to an atomic.
        // A failure to register (only when out of memory) leaves the other safeguards.
        unsafe { atexit(at_exit) };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("murmur-rt")
            .on_thread_start(|| RUNTIME_THREAD.with(|t| t.set(true)))
            .enable_all()
            .build()
    })
}
