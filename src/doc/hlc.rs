//! Hybrid logical clock stamps: the time stamp every write carries.
//!
//! A stamp is `milliseconds since the Unix epoch << 16 | counter`. Stamps are **per key**: a
//! local write to a key is stamped with the greater of this node's own clock ([`Hlc::stamp`]:
//! wall time, kept strictly increasing by a 16-bit counter that absorbs bursts within one
//! millisecond) and one more than the stamp of the key's current winning entry
//! ([`Hlc::stamp_over`]). So a writer always beats every value it had seen for that key (the
//! contract), and reads its own write, while concurrent writes resolve roughly by when they
//! happened.
//!
//! There is no global clock that peers' stamps push forward: a stamp from a node whose clock
//! runs a day ahead raises the stamps of the keys written over it, and nothing else, on no
//! other node (issue 15: one such write used to pin every replica's clock a day ahead, for
//! good). How far a node's clock may be off is bounded separately ([`crate::clock`]).
//!
//! Saturation: a stamp is at most `u64::MAX` (a wall clock in the year ~10,900). A write over
//! a key whose winning stamp is `u64::MAX` is stamped `u64::MAX` too: within an epoch it still
//! replaces what its writer saw (automerge's causal order), but against a concurrent entry of
//! the same stamp the greater value hash wins.

/// Bits of the logical counter below the milliseconds.
const COUNTER_BITS: u32 = 16;

/// This node's own clock: the last stamp it issued from wall time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Hlc {
    last: u64,
}

impl Hlc {
    /// A new stamp from the wall clock at `now_ms`: above every stamp this clock issued.
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let wall = now_ms.saturating_mul(1 << COUNTER_BITS);
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }

    /// The stamp of a local write at wall time `now_ms` over a key whose winning entry (value
    /// or tombstone) is stamped `seen`: the own clock's stamp, or one more than `seen` when that
    /// is greater. Peers' stamps never move the own clock.
    pub fn stamp_over(&mut self, now_ms: u64, seen: Option<u64>) -> u64 {
        let own = self.stamp(now_ms);
        seen.map_or(own, |s| own.max(s.saturating_add(1)))
    }

    /// The wall-clock milliseconds of a stamp.
    pub fn millis(stamp: u64) -> u64 {
        stamp >> COUNTER_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn stamps_increase_even_when_the_wall_clock_stalls_or_goes_back() {
        let mut c = Hlc::default();
        let a = c.stamp(1000);
        let b = c.stamp(1000);
        let d = c.stamp(900);
        assert!(a < b && b < d);
        assert_eq!(Hlc::millis(a), 1000);
    }

    #[test]
    fn a_write_beats_the_entry_it_overwrites_without_moving_the_clock() {
        let t = 1_700_000_000_000u64;
        let mut c = Hlc::default();
        // The key's winner came from a clock a day ahead.
        let ahead = (t + DAY_MS) << COUNTER_BITS;
        let s = c.stamp_over(t, Some(ahead));
        assert_eq!(s, ahead + 1, "the writer beats what it saw");
        // Another key is stamped by this node's own clock, not a day ahead.
        let other = c.stamp_over(t + 5, None);
        assert_eq!(Hlc::millis(other), t + 5);
        // An older winner does not hold the stamp back.
        let old = c.stamp_over(t + 6, Some(1));
        assert_eq!(Hlc::millis(old), t + 6);
    }

    #[test]
    fn a_saturated_stamp_stays_saturated_and_harms_only_its_key() {
        let mut c = Hlc::default();
        assert_eq!(c.stamp_over(1, Some(u64::MAX)), u64::MAX);
        assert_eq!(Hlc::millis(c.stamp_over(2, None)), 2);
        // A far-future wall clock saturates instead of overflowing.
        assert_eq!(c.stamp(u64::MAX), u64::MAX);
    }
}
