//! Foreign-language interfaces: the C ABI ([`c`]) and the uniffi objects ([`uniffi`]) used by
//! the Python, Kotlin and Swift bindings.
//!
//! Foreign callers have no tokio runtime of their own, so the library owns one multi-threaded
//! runtime ([`runtime`]), created on first use and shared by every swarm opened through either
//! interface.

pub mod c;
pub mod uniffi;

use once_cell::sync::OnceCell;
use tokio::runtime::Runtime;

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// The library's runtime for foreign callers (created on first use).
pub(crate) fn runtime() -> std::io::Result<&'static Runtime> {
    RUNTIME.get_or_try_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("murmur-rt")
            .enable_all()
            .build()
    })
}
