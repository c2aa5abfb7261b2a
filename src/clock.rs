//! Wall clocks: each peer's measured offset, the bound on skew, and the clock tombstone expiry
//! trusts.
//!
//! Stamps ([`crate::doc::hlc`]) follow each node's wall clock. A node whose clock is far from
//! the others' could order writes wrongly or expire deletions early, so every node measures
//! each connected peer's clock ([`OffsetEstimator`], fed by the node task's `ClockPing` /
//! `ClockPong` exchange, NTP-style) and compares its own with the **median** of the clocks it
//! can see, its own included ([`swarm_offset`]):
//! - a node more than the configured maximum offset away from that median refuses local
//!   writes ([`crate::Error::ClockSkew`]);
//! - tombstones expire by the earlier of the node's own clock and that median
//!   ([`expiry_clock`]), and never while no peer's clock has been measured.
//!
//! The pure functions here take every time as an argument; [`Clocks`] is the driver-side
//! holder shared by the node task (which measures), the replica thread (which stamps and
//! expires) and the `Swarm` handle (which refuses writes), and the only place that reads the
//! system clock.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{error::Error, ids::NodeBytes};

/// Default of [`SwarmBuilder::max_clock_offset`](crate::SwarmBuilder::max_clock_offset).
pub const DEFAULT_MAX_CLOCK_OFFSET: Duration = Duration::from_secs(60);

/// How many recent samples an estimator keeps; the one with the shortest round trip wins.
const SAMPLES: usize = 8;

/// One peer's clock offset, from ping/pong round trips.
#[derive(Debug, Default, Clone)]
pub(crate) struct OffsetEstimator {
    /// Recent `(round trip ms, offset ms)` samples, oldest first.
    samples: Vec<(u64, i64)>,
}

impl OffsetEstimator {
    /// Takes a sample: the peer said its wall clock read `their_wall_ms` while answering a
    /// ping that took `rtt_ms` there and back and was answered here at `my_wall_ms`. The peer
    /// read its clock about half a round trip ago.
    pub fn sample(&mut self, their_wall_ms: u64, my_wall_ms: u64, rtt_ms: u64) {
        let offset = i128::from(their_wall_ms) + i128::from(rtt_ms / 2) - i128::from(my_wall_ms);
        let offset = offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        if self.samples.len() == SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push((rtt_ms, offset));
    }

    /// The estimate: the offset of the recent sample with the shortest round trip (the one
    /// least disturbed by queueing), peer minus this node, in milliseconds.
    pub fn offset_ms(&self) -> Option<i64> {
        self.samples
            .iter()
            .rev()
            .min_by_key(|(rtt, _)| *rtt)
            .map(|(_, o)| *o)
    }
}

/// The two middle values of this node's clock (offset 0) and its peers' (their offsets from
/// it), as offsets from this node: equal when the count is odd.
fn middles(peer_offsets_ms: &[i64]) -> (i64, i64) {
    let mut all: Vec<i64> = peer_offsets_ms.to_vec();
    all.push(0);
    all.sort_unstable();
    let n = all.len();
    (all[(n - 1) / 2], all[n / 2])
}

/// How far this node's clock is from the median of the clocks it measures, its own included:
/// positive when it is ahead. With an even number of clocks the median is the interval between
/// the two middle ones, and a clock inside it is 0 away: with one peer, or in any even split,
/// no node can tell whose clock is wrong, and none is blamed. Equivalently, the result exceeds
/// a bound `b` exactly when more than half of all the clocks are more than `b` away from this
/// one, on the same side.
pub(crate) fn swarm_offset(peer_offsets_ms: &[i64]) -> i64 {
    let (lo, hi) = middles(peer_offsets_ms);
    if hi < 0 {
        hi.saturating_neg()
    } else if lo > 0 {
        lo.saturating_neg()
    } else {
        0
    }
}

/// The wall time by which tombstones may expire: the earlier of this node's clock and the
/// (lower) median of the clocks it measures. None while no peer clock is measured: a node
/// alone cannot tell whether its own clock runs ahead, and keeps every tombstone.
pub(crate) fn expiry_clock(own_ms: u64, peer_offsets_ms: &[i64]) -> Option<u64> {
    if peer_offsets_ms.is_empty() {
        return None;
    }
    let (lo, _) = middles(peer_offsets_ms);
    Some(own_ms.saturating_add_signed(lo.min(0)))
}

/// The driver-side clock state of one node (see the module docs).
#[derive(Debug)]
pub(crate) struct Clocks {
    /// Added to the system clock: a test hook to give one in-process node a skewed clock.
    skew_ms: i64,
    /// The configured bound.
    max_offset: Duration,
    /// Measured offsets of connected peers (peer minus this node).
    peers: Mutex<HashMap<NodeBytes, i64>>,
}

impl Clocks {
    /// Clocks with the bound `max_offset`, reading the system clock moved by `skew_ms`.
    pub fn new(max_offset: Duration, skew_ms: i64) -> Self {
        Clocks {
            skew_ms,
            max_offset,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// This node's wall time, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        sys.saturating_add_signed(self.skew_ms)
    }

    fn offsets(&self) -> Vec<i64> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.values().copied().collect()
    }

    /// Records `peer`'s measured offset.
    pub fn set_peer(&self, peer: NodeBytes, offset_ms: i64) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.insert(peer, offset_ms);
    }

    /// Forgets `peer` (it disconnected).
    pub fn remove_peer(&self, peer: &NodeBytes) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.remove(peer);
    }

    /// Fails with [`Error::ClockSkew`] when this node's clock is more than the bound away from
    /// the median of the clocks it measures.
    pub fn check_write(&self) -> Result<(), Error> {
        let offset_ms = swarm_offset(&self.offsets());
        let max_ms = self.max_offset.as_millis().min(u128::from(u64::MAX)) as u64;
        if offset_ms.unsigned_abs() > max_ms {
            return Err(Error::ClockSkew { offset_ms, max_ms });
        }
        Ok(())
    }

    /// The wall time tombstone expiry goes by now (see [`expiry_clock`]).
    pub fn expiry_now_ms(&self) -> Option<u64> {
        expiry_clock(self.now_ms(), &self.offsets())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    #[test]
    fn the_estimate_takes_half_the_round_trip_and_the_quickest_sample() {
        let mut e = OffsetEstimator::default();
        assert_eq!(e.offset_ms(), None);
        // The peer is 1000 ms ahead; the pong took 10 ms there and back.
        e.sample(101_005, 100_010, 10);
        assert_eq!(e.offset_ms(), Some(1000));
        // A slow round trip (queueing on the way back) says less: the quick one is kept.
        e.sample(102_000, 101_500, 1000);
        assert_eq!(e.offset_ms(), Some(1000));
        for i in 0..SAMPLES as u64 {
            e.sample(200_000 + i, 199_000 + i, 20);
        }
        assert_eq!(e.offset_ms(), Some(1010), "old samples age out");
        // Extreme clocks do not overflow.
        e.sample(u64::MAX, 0, 0);
        assert_eq!(e.offset_ms(), Some(i64::MAX));
    }

    #[test]
    fn a_node_is_skewed_when_most_clocks_disagree_with_it() {
        // Alone, or with one peer: nobody can be blamed.
        assert_eq!(swarm_offset(&[]), 0);
        assert_eq!(swarm_offset(&[-DAY]), 0);
        assert_eq!(swarm_offset(&[DAY]), 0);
        // A node a day ahead of its two peers.
        assert_eq!(swarm_offset(&[-DAY, -DAY + 5]), DAY - 5);
        // One of those two peers: the majority agrees with it (to within 5 ms).
        assert_eq!(swarm_offset(&[DAY, 5]), -5);
        // A node behind three others; an even split blames nobody.
        assert_eq!(swarm_offset(&[DAY, DAY, DAY]), -DAY);
        assert_eq!(swarm_offset(&[DAY, DAY, 0]), 0);
        assert_eq!(swarm_offset(&[i64::MIN, i64::MIN]), i64::MAX);
    }

    #[test]
    fn tombstones_expire_by_the_earlier_of_own_and_the_median_clock() {
        let own = 100 * DAY as u64;
        assert_eq!(expiry_clock(own, &[]), None, "alone: never");
        // A leader 40 days ahead of its peers goes by theirs.
        let behind = own - 40 * DAY as u64;
        assert_eq!(expiry_clock(own, &[-40 * DAY]), Some(behind));
        assert_eq!(expiry_clock(own, &[-40 * DAY, -40 * DAY]), Some(behind));
        // Peers ahead never advance it.
        assert_eq!(expiry_clock(own, &[40 * DAY, 40 * DAY]), Some(own));
        assert_eq!(expiry_clock(5, &[i64::MIN]), Some(0));
    }

    #[test]
    fn clocks_refuse_writes_beyond_the_bound() {
        let c = Clocks::new(Duration::from_secs(60), 0);
        assert!(c.check_write().is_ok());
        c.set_peer([1; 32], -DAY);
        assert!(c.check_write().is_ok(), "one peer: cannot tell");
        c.set_peer([2; 32], -DAY);
        match c.check_write() {
            Err(Error::ClockSkew { offset_ms, max_ms }) => {
                assert_eq!((offset_ms, max_ms), (DAY, 60_000));
            }
            other => panic!("{other:?}"),
        }
        c.remove_peer(&[2; 32]);
        assert!(c.check_write().is_ok());
        let skewed = Clocks::new(Duration::from_secs(60), DAY);
        assert!(skewed.now_ms() > c.now_ms() + DAY as u64 - 60_000);
    }
}
