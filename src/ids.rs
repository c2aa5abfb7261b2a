//! The shared vocabulary of every layer: node IDs, value hashes, epoch names, and the text
//! form of a node ID. A leaf: it imports nothing of the crate, so that the layers above
//! (`doc`, `history`, `sync`, `net`, `replica`) can all name these without importing each
//! other.

use serde::{Deserialize, Serialize};

/// A node's 32-byte ID (its iroh endpoint public key).
pub(crate) type NodeBytes = [u8; 32];

/// The content address of a value: the first 16 bytes of its BLAKE3 hash.
pub(crate) type ValueHash = [u8; 16];

/// Hashes a value.
pub(crate) fn value_hash(value: &[u8]) -> ValueHash {
    let full = blake3::hash(value);
    let mut h = [0u8; 16];
    h.copy_from_slice(&full.as_bytes()[..16]);
    h
}

/// A node ID in iroh's text form (lowercase hex of the public key).
pub(crate) fn node_id_string(id: &NodeBytes) -> String {
    data_encoding::HEXLOWER.encode(id)
}

/// The name of an epoch: greater epochs replace smaller ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochId {
    /// Term of the leader that cut it (compared first: the fencing token).
    pub term: u64,
    /// How many epochs came before it in its line.
    pub n: u64,
    /// The leader that cut it (breaks ties between leaders that claimed the same term).
    pub leader: NodeBytes,
}

impl EpochId {
    /// The epoch every store starts in (its document has no genesis).
    pub const ZERO: EpochId = EpochId {
        term: 0,
        n: 0,
        leader: [0; 32],
    };

    /// The epoch a leader with `term` cuts after this one.
    pub fn next(&self, term: u64, leader: NodeBytes) -> EpochId {
        EpochId {
            term: term.max(self.term),
            n: self.n.saturating_add(1),
            leader,
        }
    }

    /// The automerge actor of this epoch's genesis change: the same on every replica, so a
    /// genesis built twice from the same entries is the same change.
    pub fn genesis_actor(&self) -> Vec<u8> {
        let mut h = blake3::Hasher::new();
        h.update(b"murmur genesis v1");
        h.update(&self.term.to_be_bytes());
        h.update(&self.n.to_be_bytes());
        h.update(&self.leader);
        h.finalize().as_bytes()[..16].to_vec()
    }
}
