//! Events delivered by [`Swarm::subscribe`](crate::Swarm::subscribe).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::broadcast;
use tokio_stream::{wrappers::BroadcastStream, Stream, StreamExt};

/// Something that happened to the map or to the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key now holds a new value (written here or by a peer). Writing the value a key
    /// already holds is not a change and produces no event.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
        /// The node that wrote it.
        origin: String,
    },
    /// A key was deleted (here or by a peer).
    Deleted {
        /// The key.
        key: String,
        /// The node that deleted it (for a deletion learned during a bulk catch-up, the peer it
        /// was learned from).
        origin: String,
    },
    /// The leader this node reports changed (`None`: no leader known at the moment, an
    /// election is running).
    LeaderChanged {
        /// The new leader's node ID.
        leader: Option<String>,
        /// The leader's term: strictly increasing across leader changes, usable as a fencing
        /// token.
        term: u64,
    },
    /// An authenticated connection to a peer was established.
    PeerUp {
        /// The peer's node ID.
        peer: String,
    },
    /// The connection to a peer was lost.
    PeerDown {
        /// The peer's node ID.
        peer: String,
    },
    /// This replica entered a new history epoch: its stored history was replaced by the live
    /// entries (see [`crate::history`]). On the leader this is a compaction it started; on the
    /// others, adopting it.
    Compacted {
        /// The epoch's sequence number.
        epoch: u64,
        /// The term of the leader that started it.
        term: u64,
        /// Live keys after the switch.
        keys: u64,
        /// Bytes of the stored document before.
        bytes_before: u64,
        /// Bytes of the stored document after.
        bytes_after: u64,
    },
    /// This replica could not store something (disk full, the database locked by another
    /// program past the busy timeout, a switch to a new epoch that did not commit, ...).
    /// Writes in the failed batch returned the error to their callers; changes received from
    /// peers are asked for again. The replica keeps working and retries by itself, and reports
    /// [`Event::StorageRecovered`] at its first commit that succeeds again. Reported once per
    /// run of failures, not for every failed attempt.
    StorageFailed {
        /// What failed, as the storage reported it.
        error: String,
    },
    /// Storing works again after [`Event::StorageFailed`]: a commit succeeded, and this
    /// replica is catching up with its peers on what it could not store.
    StorageRecovered,
    /// This subscriber fell behind and `missed` events were dropped for it. Read the current
    /// state with `get` if it matters.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

/// A stream of [`Event`]s, from the moment of [`Swarm::subscribe`](crate::Swarm::subscribe).
///
/// Each subscriber has its own buffer of 4096 events; one that falls further behind receives
/// [`Event::Lagged`] and continues with newer events. The stream ends when the swarm shuts down.
pub struct EventStream {
    inner: BroadcastStream<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        EventStream {
            inner: BroadcastStream::new(rx),
        }
    }

    /// Waits for the next event; `None` once the swarm has shut down.
    pub async fn recv(&mut self) -> Option<Event> {
        self.next().await
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(e))) => Poll::Ready(Some(e)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(Event::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}
