//! Per-peer replication logic, as a sans-IO state machine.
//!
//! Two mechanisms keep replicas converging (DESIGN.md §4):
//! - **Push**: every change a node commits is sent at once, as raw automerge change bytes with the
//!   values it references, to every connected peer. One message, no round trip: this is the fast
//!   path that sets replication latency.
//! - **Automerge sync**: on (re)connect, after a gap (a pushed change whose dependencies are
//!   missing), and periodically as anti-entropy, the automerge sync protocol runs to find and
//!   exchange whatever the two replicas still lack. Its per-peer state is persisted so a
//!   reconnect starts from the last shared heads instead of a full bloom filter.
//!
//! Values are not in the document (see [`crate::doc`]): a replica that learns of a value hash it
//! does not hold asks the peer for it with [`DataMsg::Want`]. The replica layer does that part,
//! since it owns the value store.
//!
//! **Snapshot transfer.** A peer with an empty document gets the whole document in one sync
//! message (automerge sends `save()` bytes; [`Polled::whole`] says so), and the serving replica
//! sends every value right behind it without waiting for a `Want`. The new replica stores the
//! received bytes as its snapshot ([`Received::Synced`] hands them over) instead of extracting
//! and storing thousands of changes, and does not ask for values that are already on their way.
//! A join is then one document load, one bulk insert of values and one pass over the map; the
//! replica does the load on another thread ([`PeerSync::receive_offloading`], [`WholeDoc`]) while
//! it stores the values.
//!
//! [`PeerSync`] does no I/O and has no clock: the caller feeds it received messages and asks it
//! for messages to send. `tests` drives several replicas through a simulated network with
//! message loss and disconnects.

use automerge::{sync, Change};
use serde::{Deserialize, Serialize};

use crate::doc::{KvDoc, ValueHash};
use crate::history::EpochId;

/// Largest part of an automerge sync message carried in one frame. Larger messages (a whole
/// document sent to a new peer) are split into parts and reassembled.
pub(crate) const SYNC_PART: usize = 1 << 20;

/// Largest reassembled sync message accepted from a peer (a whole document of a million keys
/// is about 40 MB).
pub(crate) const MAX_SYNC_MESSAGE: usize = 128 << 20;

/// Messages of the data stream (after authentication).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DataMsg {
    /// "My document is in this epoch" (see [`crate::history`]): sent first on every
    /// connection and after every switch. Changes and sync messages only flow between peers in
    /// the same epoch.
    Epoch {
        /// The sender's epoch.
        epoch: EpochId,
    },
    /// Changes just committed by the sender, with the values they put.
    Push {
        /// The epoch of the document the changes belong to.
        epoch: EpochId,
        /// Raw automerge changes.
        changes: Vec<Vec<u8>>,
        /// Value bytes; the receiver hashes them itself.
        values: Vec<Vec<u8>>,
    },
    /// A part of an automerge sync message; parts are concatenated until `last`.
    Sync {
        /// The epoch of the document being synced.
        epoch: EpochId,
        /// The bytes of this part.
        part: Vec<u8>,
        /// Whether this is the final part.
        last: bool,
    },
    /// A request for the values with these hashes.
    Want {
        /// Hashes requested.
        hashes: Vec<ValueHash>,
    },
    /// Values (the answer to a `Want`).
    Values {
        /// Value bytes; the receiver hashes them itself.
        values: Vec<Vec<u8>>,
    },
    /// A follower asks the leader to start a new epoch (`Swarm::compact`).
    CompactRequest,
    /// "Forget what you believe I have": the sender failed to commit something (a disk
    /// error, a locked database) and went back to its stored document, so changes it received
    /// or was sent may be gone from it. The receiver starts its sync state for the sender
    /// afresh (automerge's state remembers the changes it sent and would never send those
    /// again) and runs a sync round at once.
    Resync,
}

/// A peer broke the protocol: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error("malformed change from peer: {0}")]
    BadChange(String),
    #[error("{0}")]
    BadSync(String),
    #[error("sync message larger than {MAX_SYNC_MESSAGE} bytes")]
    TooLarge,
}

/// A whole document that filled an empty replica: its bytes (a snapshot of the document as it
/// now stands) and its heads.
pub(crate) type Loaded = (Vec<u8>, Vec<automerge::ChangeHash>);

/// What a received message means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Pushed changes were applied; `values` came with them. The caller stores the values and
    /// records the new changes. If the document now has changes waiting for missing
    /// dependencies (a gap), it calls [`PeerSync::poll`] to start a sync round.
    Pushed {
        /// Values sent with the changes.
        values: Vec<Vec<u8>>,
        /// Hashes of the values the pushed changes put: only values with these hashes are
        /// kept (anything else a peer sends along is dropped, not stored).
        referenced: std::collections::HashSet<ValueHash>,
    },
    /// A sync message was applied: the caller records the new changes and calls
    /// [`PeerSync::poll`], since a reply is usually due.
    Synced {
        /// When the message filled an empty document with a whole one: store it as such.
        loaded: Option<Loaded>,
    },
    /// Part of a sync message was buffered; nothing to do yet.
    Buffered,
    /// The peer sent values (answering a `Want`).
    Values(Vec<Vec<u8>>),
    /// The peer wants these values.
    Want(Vec<ValueHash>),
    /// A whole document for this empty replica (only from [`PeerSync::receive_offloading`]):
    /// nothing was applied yet. The caller loads it, off its own thread if it likes, with
    /// [`WholeDoc::load`], and hands the outcome back with [`PeerSync::loaded`].
    Whole(WholeDoc),
}

/// A whole document sent to an empty replica, not yet loaded (see [`Received::Whole`]).
///
/// Loading one is the longest step of a join (a quarter of a second at 100k keys, about as long
/// as storing the values that follow it): done on another thread, the two overlap
/// (BENCHMARKS.md, W4).
pub(crate) struct WholeDoc {
    /// The sync state as of receiving the message (the message is applied to a copy).
    state: sync::State,
    /// The reassembled sync message.
    msg: Vec<u8>,
}

impl std::fmt::Debug for WholeDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WholeDoc({} bytes)", self.msg.len())
    }
}

/// Two are the same message (the sync state is a copy of the receiver's).
impl PartialEq for WholeDoc {
    fn eq(&self, other: &Self) -> bool {
        self.msg == other.msg
    }
}

impl Eq for WholeDoc {}

/// A loaded [`WholeDoc`].
pub(crate) struct LoadedWhole {
    /// The document, with `node`'s actor.
    pub doc: KvDoc,
    /// The sync state after the message: give it back with [`PeerSync::loaded`].
    pub state: sync::State,
    /// The document's bytes and heads, to store as the snapshot; None when the document
    /// sent was empty (a peer that has nothing either: nothing to store).
    pub loaded: Option<Loaded>,
    /// Every key's winning entry, in key order.
    pub winners: Vec<(String, crate::doc::Entry)>,
}

impl WholeDoc {
    /// Applies the message to a new empty document of `epoch`, and reads every key's winner.
    /// Touches nothing else: it may run on any thread.
    pub fn load(
        mut self,
        node: &crate::doc::NodeBytes,
        epoch: &EpochId,
    ) -> Result<LoadedWhole, SyncError> {
        let mut doc = KvDoc::empty(node, epoch);
        // Nothing loaded means the document sent holds no change: a peer that has nothing
        // either sends one (its `save()` of an empty document). That is not misbehaviour;
        // taking it for some closed every connection between two empty nodes as soon as it
        // synced, again at every redial (and a follower that lost its leader's connection
        // so called elections).
        let loaded = doc
            .receive_sync_message(&mut self.state, &self.msg)
            .map_err(SyncError::BadSync)?
            .map(|bytes| (bytes, doc.heads()));
        let winners = doc.all_entries();
        Ok(LoadedWhole {
            doc,
            state: self.state,
            loaded,
            winners,
        })
    }
}

/// The outcome of [`PeerSync::poll`].
#[derive(Debug, Default)]
pub(crate) struct Polled {
    /// The sync message, in parts (empty: nothing to say).
    pub msgs: Vec<DataMsg>,
    /// The message carries the whole document to a peer whose document is empty: the caller
    /// sends the values behind it.
    pub whole: bool,
}

/// Replication state for one connected peer.
pub(crate) struct PeerSync {
    state: sync::State,
    /// Parts of a sync message received so far.
    partial: Vec<u8>,
    /// Largest part sent (SYNC_PART; smaller in tests).
    part_size: usize,
    /// The whole document was sent to this peer (see [`PeerSync::poll`]).
    whole_sent: bool,
    /// Polls that held back a second whole document since.
    whole_waits: u32,
}

/// How many polls (about one a second when idle) a whole document that was sent waits for the
/// peer's answer before it may be sent again.
const WHOLE_RESEND_AFTER_POLLS: u32 = 8;

impl PeerSync {
    /// Starts from a persisted state (see [`PeerSync::persisted`]), or fresh.
    pub fn new(persisted: Option<&[u8]>) -> Self {
        let state = persisted
            .and_then(|b| sync::State::decode(b).ok())
            .unwrap_or_default();
        PeerSync {
            state,
            partial: Vec::new(),
            part_size: SYNC_PART,
            whole_sent: false,
            whole_waits: 0,
        }
    }

    /// Same, sending sync messages in parts of at most `part_size` bytes.
    #[cfg(test)]
    pub fn with_part_size(part_size: usize) -> Self {
        PeerSync {
            part_size,
            ..PeerSync::new(None)
        }
    }

    /// What to persist so that the next connection resumes from the heads shared now.
    pub fn persisted(&self) -> Vec<u8> {
        self.state.encode()
    }

    /// The messages of the next sync round, if the protocol has anything to say (called on
    /// connect, after applying a received message, after a gap and on anti-entropy ticks).
    pub fn poll(&mut self, doc: &mut KvDoc, epoch: EpochId) -> Polled {
        // After the whole document went out, a message from the peer that still shows it empty
        // was sent before the document arrived (they crossed): automerge would send the whole
        // document again. Wait for the peer's answer to it instead, a few polls at most (in
        // case the document was lost with a message the peer dropped).
        let peer_empty = self
            .state
            .their_heads
            .as_ref()
            .is_some_and(|h| h.is_empty());
        if self.whole_sent && peer_empty && self.whole_waits < WHOLE_RESEND_AFTER_POLLS {
            self.whole_waits += 1;
            return Polled::default();
        }
        match doc.generate_sync_message(&mut self.state) {
            None => Polled::default(),
            Some((bytes, whole)) => {
                self.whole_sent |= whole;
                self.whole_waits = 0;
                Polled {
                    msgs: split_sync(bytes, self.part_size, epoch),
                    whole,
                }
            }
        }
    }

    /// Like [`PeerSync::receive`], except that a whole document for an empty `doc` is handed
    /// back unapplied, as [`Received::Whole`].
    pub fn receive_offloading(
        &mut self,
        doc: &mut KvDoc,
        msg: DataMsg,
    ) -> Result<Received, SyncError> {
        match msg {
            DataMsg::Sync {
                part, last: true, ..
            } if doc.is_empty() => {
                let whole = self.reassemble(part)?;
                if KvDoc::carries_whole_document(&whole) {
                    Ok(Received::Whole(WholeDoc {
                        state: self.state.clone(),
                        msg: whole,
                    }))
                } else {
                    self.apply_sync(doc, &whole)
                }
            }
            msg => self.receive(doc, msg),
        }
    }

    /// Takes the sync state of a [`WholeDoc`] that was loaded (as if [`PeerSync::receive`]
    /// had applied it).
    pub fn loaded(&mut self, state: sync::State) {
        self.state = state;
    }

    /// Handles a message from the peer. The caller has checked that its epoch is `doc`'s.
    pub fn receive(&mut self, doc: &mut KvDoc, msg: DataMsg) -> Result<Received, SyncError> {
        match msg {
            DataMsg::Push {
                changes, values, ..
            } => {
                let parsed = changes
                    .into_iter()
                    .map(Change::from_bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| SyncError::BadChange(e.to_string()))?;
                doc.apply_changes(parsed.clone())
                    .map_err(SyncError::BadChange)?;
                let referenced = parsed.iter().flat_map(|c| doc.put_hashes(c)).collect();
                Ok(Received::Pushed { values, referenced })
            }
            DataMsg::Sync { part, last, .. } => {
                if !last {
                    if self.partial.len() + part.len() > MAX_SYNC_MESSAGE {
                        self.partial = Vec::new();
                        return Err(SyncError::TooLarge);
                    }
                    self.partial.extend_from_slice(&part);
                    return Ok(Received::Buffered);
                }
                let whole = self.reassemble(part)?;
                self.apply_sync(doc, &whole)
            }
            DataMsg::Want { hashes } => Ok(Received::Want(hashes)),
            DataMsg::Values { values } => Ok(Received::Values(values)),
            DataMsg::Epoch { .. } | DataMsg::CompactRequest | DataMsg::Resync => {
                Ok(Received::Buffered)
            }
        }
    }
}

impl PeerSync {
    /// The whole sync message, given its last part.
    fn reassemble(&mut self, last: Vec<u8>) -> Result<Vec<u8>, SyncError> {
        if self.partial.len() + last.len() > MAX_SYNC_MESSAGE {
            self.partial = Vec::new();
            return Err(SyncError::TooLarge);
        }
        Ok(if self.partial.is_empty() {
            last
        } else {
            let mut w = std::mem::take(&mut self.partial);
            w.extend_from_slice(&last);
            w
        })
    }

    fn apply_sync(&mut self, doc: &mut KvDoc, whole: &[u8]) -> Result<Received, SyncError> {
        let loaded = doc
            .receive_sync_message(&mut self.state, whole)
            .map_err(SyncError::BadSync)?
            .map(|bytes| (bytes, doc.heads()));
        Ok(Received::Synced { loaded })
    }
}

fn split_sync(bytes: Vec<u8>, part_size: usize, epoch: EpochId) -> Vec<DataMsg> {
    if bytes.len() <= part_size {
        return vec![DataMsg::Sync {
            epoch,
            part: bytes,
            last: true,
        }];
    }
    let n = bytes.len().div_ceil(part_size);
    bytes
        .chunks(part_size)
        .enumerate()
        .map(|(i, c)| DataMsg::Sync {
            epoch,
            part: c.to_vec(),
            last: i + 1 == n,
        })
        .collect()
}

#[cfg(test)]
mod tests;
