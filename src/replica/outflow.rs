//! Flow control of the values a replica sends to one peer.
//!
//! Values go out in bulk in two cases: a snapshot transfer (every value, pushed behind the
//! whole document to a joining node) and answers to `Want`. Reading them all from the store at
//! once and queueing them for the connection held several times the store in memory on the
//! sending node (a 176 MiB store peaked above 780 MiB while one node joined). Instead the
//! replica keeps the *hashes* still to send (see `PeerLink::outbox`) and reads values only while
//! fewer than [`MAX_QUEUED_VALUE_BYTES`] of them wait in the connection's send queue; the
//! connection's writer, which takes messages off that queue, tells the replica
//! ([`Command::Drained`](super::Command::Drained)) once it has written the queue below half of
//! that. Memory per receiving peer is then bounded by the limit plus one message, whatever the
//! size of the store.
//!
//! The wake-up cannot be lost: the replica raises [`Outflow::wants_wake`] *before* it looks at
//! the queue a last time, and whichever side clears the flag refills.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::mpsc;

use crate::sync::DataMsg;

/// Most bytes of values queued for one peer (and not yet written to its stream) before the
/// replica stops reading more from the store.
#[cfg(not(test))]
pub(crate) const MAX_QUEUED_VALUE_BYTES: usize = 16 << 20;
/// (Small in unit tests, so that a test store exceeds it many times over.)
#[cfg(test)]
pub(crate) const MAX_QUEUED_VALUE_BYTES: usize = 256 << 10;

/// The sending side of a connection's data stream, as the replica holds it.
#[derive(Clone)]
pub(crate) struct DataTx {
    /// The connection's send queue.
    pub tx: mpsc::Sender<DataMsg>,
    /// How much of it is values, shared with the connection's writer.
    pub flow: Arc<Outflow>,
}

impl DataTx {
    /// A send queue of `capacity` messages and its flow state; the receiver goes to the writer.
    pub fn channel(capacity: usize) -> (DataTx, mpsc::Receiver<DataMsg>, Arc<Outflow>) {
        let (tx, rx) = mpsc::channel(capacity);
        let flow = Arc::new(Outflow::default());
        (
            DataTx {
                tx,
                flow: flow.clone(),
            },
            rx,
            flow,
        )
    }
}

/// Bytes of values waiting in one connection's send queue (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Outflow {
    /// Bytes of `Values` messages queued and not yet written to the stream.
    queued: AtomicUsize,
    /// The replica has more values for this peer and waits for the queue to drain.
    wants_wake: AtomicBool,
}

/// The value bytes a message carries (only `Values` count: they are what a peer can make a
/// node send in bulk).
fn value_bytes(msg: &DataMsg) -> usize {
    match msg {
        DataMsg::Values { values } => values.iter().map(Vec::len).sum(),
        _ => 0,
    }
}

impl Outflow {
    /// Bytes of values queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether the replica may read more values for this peer.
    pub fn has_room(&self) -> bool {
        self.queued() < MAX_QUEUED_VALUE_BYTES
    }

    /// The replica queued `msg` (call before sending it, so the writer never sees it uncounted).
    pub fn queue(&self, msg: &DataMsg) {
        self.queued.fetch_add(value_bytes(msg), Ordering::AcqRel);
    }

    /// A message the replica counted with [`Outflow::queue`] was not sent after all.
    pub fn unqueue(&self, msg: &DataMsg) {
        self.sub(value_bytes(msg));
    }

    /// The replica stops with values left to send: returns true if the queue drained meanwhile
    /// (it should refill now), false if the writer will send `Drained` later.
    pub fn wait_for_room(&self) -> bool {
        self.wants_wake.store(true, Ordering::Release);
        self.queued() < MAX_QUEUED_VALUE_BYTES / 2 && self.wants_wake.swap(false, Ordering::AcqRel)
    }

    /// The writer wrote `msg` to the stream: returns true when the replica waits for room and
    /// must be told (the caller sends `Command::Drained`).
    pub fn written(&self, msg: &DataMsg) -> bool {
        let n = value_bytes(msg);
        if n == 0 {
            return false;
        }
        self.sub(n);
        self.queued() < MAX_QUEUED_VALUE_BYTES / 2 && self.wants_wake.swap(false, Ordering::AcqRel)
    }

    fn sub(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> DataMsg {
        DataMsg::Values {
            values: vec![vec![0; n]],
        }
    }

    #[test]
    fn the_writer_wakes_the_replica_once_when_the_queue_drains_below_half() {
        let f = Outflow::default();
        let big = values(MAX_QUEUED_VALUE_BYTES / 4 + 1);
        for _ in 0..4 {
            f.queue(&big);
        }
        assert!(!f.has_room());
        assert!(!f.wait_for_room(), "the queue is full: wait for the writer");
        assert!(!f.written(&big), "still above half");
        assert!(!f.written(&big), "still above half");
        assert!(f.written(&big), "below half: wake the replica");
        assert!(!f.written(&big), "once");
        assert!(f.has_room());
        // Other messages do not count.
        assert!(!f.written(&DataMsg::Resync));
    }

    #[test]
    fn a_queue_that_drained_before_the_replica_waited_is_refilled_at_once() {
        let f = Outflow::default();
        let m = values(1000);
        f.queue(&m);
        assert!(!f.written(&m), "nobody waits yet");
        assert!(
            f.wait_for_room(),
            "already drained: refill now, no wake-up will come"
        );
        assert!(!f.written(&values(0)));
    }
}

/// A node serving a joining node queues at most `MAX_QUEUED_VALUE_BYTES` of values (plus one
/// value) for it at any time, whether it pushes them unasked or answers `Want`s, and the
/// joining node still receives every value.
#[cfg(test)]
mod serving_tests {
    use std::time::Duration;

    use super::MAX_QUEUED_VALUE_BYTES;
    use crate::test_node;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_serving_a_join_queues_a_bounded_amount_of_values() {
        const VALUE: usize = 64 << 10;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = test_node(da.path(), "outflow-tests", &[]).await;
        // 40 values of 64 KiB: ten times the bound, and far beyond what is pushed unasked
        // (`MAX_PUSHED_VALUES`), so that most go as answers to `Want`.
        for i in 0..40u8 {
            a.put(&format!("k{i:02}"), vec![i; VALUE]).await.unwrap();
        }
        let b = test_node(db.path(), "outflow-tests", &[a.ticket()]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = b.len().await.unwrap() == 40;
            for i in 0..40u8 {
                all = all && b.get(&format!("k{i:02}")).await.unwrap() == Some(vec![i; VALUE]);
            }
            if all {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "B did not get every value"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let most = a.max_queued_values();
        assert!(most >= VALUE, "values went out through the outbox: {most}");
        assert!(
            most <= MAX_QUEUED_VALUE_BYTES + VALUE,
            "{most} bytes of values queued for one peer at once"
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}
