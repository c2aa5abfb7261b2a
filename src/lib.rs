//! # Murmur
//!
//! A peer-to-peer replicated key-value map. Every node keeps a full replica; writes merge
//! without conflicts (automerge); each replica persists in SQLite; peers connect over iroh
//! (QUIC, NAT traversal, relays); the swarm elects a leader by the Bully algorithm.
//!
//! ```no_run
//! # async fn run() -> murmur::Result<()> {
//! use murmur::Swarm;
//! let swarm = Swarm::builder().storage_path("./data").build().await?;
//! swarm.start().await?;
//! swarm.put("user:123", b"Alice").await?;
//! assert_eq!(swarm.get("user:123").await?, Some(b"Alice".to_vec()));
//! swarm.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! One line per module, from the public API down (DESIGN.md §1). The `sans-IO` ones are
//! state machines: no I/O, no clock, no randomness of their own; the layer above feeds them
//! events with the time and carries out what they return.
//! - [`swarm`]: the public API (`Swarm`, `SwarmBuilder`); owns the layers below.
//! - `replica`: the writer thread: group commit, read view, events; drives `sync` and
//!   `history`, touches `store`.
//! - `store`: SQLite schema and transactions (snapshot + change rows, values, peer state).
//! - `doc`: the automerge document as a map of keys to value hashes and clock stamps.
//! - `sync`: sans-IO per-peer replication (push, automerge sync, whole-document joins).
//! - [`history`]: sans-IO epochs that bound stored history (compaction across the swarm).
//! - [`election`]: sans-IO Bully election with terms.
//! - `net`: iroh endpoint, handshake, framing; `net::membership` (sans-IO: which
//!   connections to keep, whom to dial, peer exchange); the driver of both state machines.
//! - `clock`: the wall clock and the measured clocks of peers (the skew bound).
//! - `ids`: the shared vocabulary (node IDs, value hashes, epoch names): a leaf.
//! - [`ffi`]: the C ABI and the uniffi objects, on one library-owned runtime.
//! - `events`, `error`: what the public API reports.

#![warn(missing_docs)]

pub(crate) mod clock;
pub(crate) mod doc;
pub mod election;
mod error;
mod events;
pub mod ffi;
/// Entry points for the fuzz targets (`fuzz/`) and their unit tests; not part of the library
/// (cargo-fuzz builds with `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub(crate) mod ids;
pub(crate) mod net;
pub(crate) mod replica;
pub(crate) mod store;
pub mod swarm;
pub(crate) mod sync;

pub use clock::DEFAULT_MAX_CLOCK_OFFSET;
pub use error::{Error, Result};
pub use events::{Event, EventStream};
pub use history::{EpochId, Policy as CompactionPolicy};
pub use net::{auth::SwarmKey, wire::ALPN, PathKind, PeerInfo};
pub use store::Durability;
pub use swarm::{
    RelayMode, Swarm, SwarmBuilder, DEFAULT_MAX_VALUE_SIZE, DEFAULT_SWARM_NAME, MAX_KEY_LEN,
    MAX_VALUE_SIZE_LIMIT,
};

uniffi::setup_scaffolding!();

/// A started node for the crate's own tests: 127.0.0.1, relays and mDNS off, fast election,
/// bootstrapping from `peers` (tickets).
#[cfg(test)]
pub(crate) async fn test_node(dir: &std::path::Path, swarm_name: &str, peers: &[String]) -> Swarm {
    let s = Swarm::builder()
        .storage_path(dir)
        .swarm_name(swarm_name)
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .relay_mode(RelayMode::Disabled)
        .local_discovery(false)
        .heartbeat_interval(std::time::Duration::from_millis(100))
        .leader_timeout(std::time::Duration::from_millis(500))
        .bootstrap(peers.iter().cloned())
        .build()
        .await
        .unwrap();
    s.start().await.unwrap();
    s
}
