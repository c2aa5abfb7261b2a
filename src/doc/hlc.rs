//! A hybrid logical clock: the time stamp every write carries.
//!
//! A clock value is `milliseconds since the Unix epoch << 16 | counter`. Each new stamp is
//! greater than every stamp this replica has issued or seen (so a write is always "later" than
//! what its writer had observed: causality is respected) and stays close to wall time (so two
//! concurrent writes on different nodes resolve roughly by when they happened). The 16-bit
//! counter absorbs bursts within one millisecond; past it, stamps run ahead of the wall clock
//! until it catches up, which keeps them unique.

/// Bits of the logical counter below the milliseconds.
const COUNTER_BITS: u32 = 16;

/// The clock state of one replica.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Hlc {
    last: u64,
}

impl Hlc {
    /// A new stamp for a write at wall time `now_ms`.
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let wall = now_ms.saturating_mul(1 << COUNTER_BITS);
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }

    /// Takes note of a stamp seen in a peer's write, so later local stamps exceed it.
    pub fn observe(&mut self, stamp: u64) {
        self.last = self.last.max(stamp);
    }

    /// The wall-clock milliseconds of a stamp.
    pub fn millis(stamp: u64) -> u64 {
        stamp >> COUNTER_BITS
    }

    /// The current wall time in milliseconds since the Unix epoch.
    pub fn wall_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn observed_stamps_are_exceeded() {
        let mut c = Hlc::default();
        c.observe(u64::from(5000u32) << 16);
        assert!(c.stamp(10) > 5000 << 16);
        // A hostile maximal stamp saturates instead of overflowing.
        c.observe(u64::MAX);
        assert_eq!(c.stamp(1), u64::MAX);
    }
}
