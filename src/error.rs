//! The one error type of the public API.
//!
//! Every variant says what went wrong and, where there is something to do about it, what to do.
//! Bindings (C, uniffi) map each variant to their own error code or class, so variants are
//! stable and distinct rather than one catch-all string.

use std::path::PathBuf;

/// Result alias used throughout Murmur's public API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a Murmur call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty, longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes, or contains a
    /// NUL character.
    #[error(
        "invalid key: {reason}; keys are non-empty UTF-8 strings of at most 1024 bytes without NUL"
    )]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// The value is larger than the configured maximum.
    #[error("value of {size} bytes exceeds the limit of {max} bytes; store large data elsewhere or raise SwarmBuilder::max_value_size")]
    ValueTooLarge {
        /// Size of the refused value.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The swarm was shut down (or is shutting down); create a new one to continue.
    #[error("the swarm is closed: it was shut down; build a new Swarm to continue")]
    Closed,
    /// Another process (or another `Swarm` in this process) has this data directory open.
    #[error("data directory {path} is in use by another Murmur instance; stop it or choose another storage_path")]
    Locked {
        /// The locked directory.
        path: PathBuf,
    },
    /// The database file is damaged: SQLite finds it malformed or not a database, the document
    /// stored in it does not decode, or a directory that held a node has an empty database
    /// file. Never reported for a full disk, missing permissions or a lock: those are
    /// [`Error::Storage`], and the store opens once they are fixed.
    #[error("the database in {path} is corrupt or not a Murmur database ({detail}); restore it from a backup or move it away to start empty and resync from peers")]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// What failed to read.
        detail: String,
    },
    /// A filesystem or SQLite operation failed on a store that is not known to be damaged: the
    /// disk is full, a file or directory cannot be written (permissions, a read-only file
    /// system), another connection holds the database locked, an I/O error. The message says
    /// which and what to do; nothing stored is lost, and the operation can be retried once
    /// the cause is gone.
    #[error("storage error: {0}")]
    Storage(String),
    /// A builder option or argument is not acceptable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A bootstrap ticket or node address could not be parsed.
    #[error("invalid ticket or node address {input:?}: {reason}; pass the string printed by Swarm::ticket() or `<node-id>@<ip>:<port>`")]
    InvalidTicket {
        /// The refused input.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// Networking could not be set up (bind failed, endpoint closed, ...).
    #[error("network error: {0}")]
    Network(String),
    /// The operation needs `start()` to have been called first.
    #[error("the swarm is not started: call Swarm::start() first")]
    NotStarted,
    /// This node's wall clock is further from its peers' than the configured maximum offset
    /// ([`SwarmBuilder::max_clock_offset`](crate::SwarmBuilder::max_clock_offset)), so local
    /// writes are refused: a write stamped by a wrong clock would be ordered wrongly against
    /// everyone else's.
    #[error("this node's clock is {offset_ms} ms off the median of its peers' clocks (more than the maximum of {max_ms} ms): writes are refused until the system clock is fixed (enable NTP or set the time)")]
    ClockSkew {
        /// This node's clock minus the median of the clocks it measures, in milliseconds
        /// (positive: this node is ahead).
        offset_ms: i64,
        /// The configured maximum offset, in milliseconds.
        max_ms: u64,
    },
}
