//! Bounded history: epochs, and the sans-IO protocol that moves a swarm from one to the next.
//!
//! automerge keeps every operation forever, so a map that is overwritten all day grows all day.
//! Murmur bounds it with *epochs*. An epoch's document starts from a **genesis**: one change
//! that holds the live entries (tombstones included) and no history. The leader decides when a
//! new epoch starts (its history outweighs its live data, see [`Policy`]) and cuts it from its
//! own state; every other replica then adopts it.
//!
//! # How a replica adopts an epoch
//!
//! Replicas announce their epoch to each other ([`Action::Announce`]). A replica that hears of
//! a greater epoch fetches that epoch's document from the peer that has it, by ordinary
//! automerge sync into an empty document ([`Action::Stage`]). Once it holds it, it **carries**
//! across every entry of its old document that beats the new document's entry for the same key
//! ([`carry`]) and switches, in one SQLite transaction, to the new document. Its old history is
//! gone.
//!
//! Carrying works without any shared history because every entry (a value or a deletion) has a
//! hybrid-logical-clock stamp and entries are totally ordered by `(stamp, hash)`: the map is a
//! last-writer-wins register per key, which automerge's conflict handling within an epoch and
//! the carry across epochs resolve the same way. So:
//! - a write that raced with the cut is carried by every replica that holds it, and is never
//!   lost while any one of them survives;
//! - a replica that slept through several epochs carries its old state straight into the newest;
//! - two leaders that cut concurrently (a partition) produce two epochs; the greater one wins
//!   and the other side carries its state across when they meet.
//!
//! # Fencing
//!
//! An epoch is named by the leader's term, a counter, and the leader's ID ([`EpochId`]), ordered
//! in that order: an epoch cut under a newer term beats any epoch of an older one, which is what
//! makes the term a fencing token here. A stale leader's cut is never *wrong* (carrying keeps
//! every entry), only wasted.
//!
//! # Limits
//!
//! - Tombstones are kept in each genesis for [`Policy::tombstone_ttl`] (30 days by default). A
//!   replica that was offline longer than that, holding a value deleted meanwhile, brings the
//!   value back. The same limit as Cassandra's `gc_grace_seconds`. A tombstone's age is judged
//!   by the time the replica passes in: the earlier of its own clock and the median of its
//!   peers' clocks (`crate::clock`), or no time at all (nothing expires) while it measures no
//!   peer's clock, so one skewed clock cannot make the swarm forget a deletion early.
//! - Carried entries keep their stamp and value; their origin (in events) becomes the replica
//!   that carried them.
//!
//! This module holds the decisions only; the replica thread carries them out with automerge
//! and SQLite. `sim_tests` runs whole swarms of it in simulated time, with message loss,
//! partitions and leaders dying mid-way.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::doc::{hlc::Hlc, Entry, NodeBytes};

#[cfg(test)]
mod sim_tests;

pub use crate::ids::EpochId;

/// When the leader starts a new epoch. Set with
/// [`SwarmBuilder::compaction`](crate::SwarmBuilder::compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Compact automatically (the leader does, on its own timer). `Swarm::compact` works
    /// either way.
    pub automatic: bool,
    /// Compact once the stored history exceeds this many times the live data...
    pub ratio: u32,
    /// ...and this many bytes (small stores are not worth the churn).
    pub min_bytes: u64,
    /// At most one automatic compaction per this interval, so replicas have time to adopt one
    /// epoch before the next.
    pub min_interval: Duration,
    /// How long a deletion is remembered across compactions (see the module docs).
    pub tombstone_ttl: Duration,
}

impl Default for Policy {
    /// Automatic; history above 4× the live data and 64 KiB; at most every 5 s; tombstones
    /// kept 30 days.
    fn default() -> Self {
        Policy {
            automatic: true,
            ratio: 4,
            min_bytes: 64 << 10,
            min_interval: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Policy {
    /// Never compact automatically (`Swarm::compact` still does).
    pub fn manual() -> Self {
        Policy {
            automatic: false,
            ..Policy::default()
        }
    }

    /// Whether a store of this size needs a new epoch.
    pub fn wants_compaction(&self, usage: Usage) -> bool {
        usage.history_bytes > self.min_bytes
            && usage.history_bytes > usage.live_bytes.saturating_mul(u64::from(self.ratio))
    }

    /// Whether a tombstone may be forgotten at wall time `now_ms`: the time tombstone expiry
    /// goes by, which the replica takes from [`crate::clock::expiry_clock`] (the earlier of its
    /// own clock and the median of its peers'). None (no peer clock measured): never.
    pub(crate) fn expired(&self, entry: &Entry, now_ms: Option<u64>) -> bool {
        let Some(now_ms) = now_ms else {
            return false;
        };
        entry.is_tombstone()
            && Hlc::millis(entry.hlc).saturating_add(self.tombstone_ttl.as_millis() as u64) < now_ms
    }
}

/// The size of a replica's stored document, as the policy sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the stored document: snapshot and change rows.
    pub history_bytes: u64,
    /// Estimated bytes of a genesis of the live entries.
    pub live_bytes: u64,
}

/// The entries a new epoch's genesis holds: all of `entries` but tombstones past their TTL.
pub(crate) fn genesis_entries(
    entries: Vec<(String, Entry)>,
    policy: &Policy,
    now_ms: Option<u64>,
) -> Vec<(String, Entry)> {
    entries
        .into_iter()
        .filter(|(_, e)| !policy.expired(e, now_ms))
        .collect()
}

/// The entries of an old epoch's document that must be written into the new one: those that
/// beat the new document's entry for their key (or whose key it lacks), except tombstones past
/// their TTL. `new_winner` looks a key up in the new document, tombstones included.
pub(crate) fn carry(
    old: Vec<(String, Entry)>,
    new_winner: impl Fn(&str) -> Option<Entry>,
    policy: &Policy,
    now_ms: Option<u64>,
) -> Vec<(String, Entry)> {
    old.into_iter()
        .filter(|(k, e)| {
            !policy.expired(e, now_ms) && new_winner(k).is_none_or(|w| e.rank() > w.rank())
        })
        .collect()
}

/// First delay before an epoch whose switch failed locally is fetched again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest such delay.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the replica must do, drained with [`Coordinator::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell `to` which epoch this replica is in.
    Announce {
        /// The peer.
        to: NodeBytes,
    },
    /// Fetch `epoch`'s document from `from` (into an empty document, by automerge sync),
    /// dropping any other epoch being fetched. When it is complete, carry and switch, then call
    /// [`Coordinator::switched`].
    Stage {
        /// The epoch to fetch.
        epoch: EpochId,
        /// A peer that is in it.
        from: NodeBytes,
    },
    /// `peer` is now in this replica's epoch: start replicating with it from a fresh sync state.
    Resync {
        /// The peer.
        peer: NodeBytes,
    },
    /// This replica leads: cut `epoch` from the current state (build its genesis, carry
    /// nothing, switch), then call [`Coordinator::switched`].
    Cut {
        /// The new epoch.
        epoch: EpochId,
    },
}

/// The epoch protocol of one replica. See the module docs.
#[derive(Debug)]
pub(crate) struct Coordinator {
    me: NodeBytes,
    policy: Policy,
    epoch: EpochId,
    /// Connected peers and the epoch each last announced (None: not heard yet).
    peers: BTreeMap<NodeBytes, Option<EpochId>>,
    /// The epoch being fetched, and from whom.
    staging: Option<(EpochId, NodeBytes)>,
    /// When this replica last entered an epoch (None: not since start).
    last_switch: Option<Duration>,
    /// A switch failed for a local reason (see [`Coordinator::switch_failed`]): when to fetch
    /// again, and the delay before the retry after that.
    retry: Option<(Duration, Duration)>,
    actions: VecDeque<Action>,
}

impl Coordinator {
    /// The protocol for replica `me`, whose store is in `epoch`.
    pub fn new(me: NodeBytes, epoch: EpochId, policy: Policy) -> Self {
        Coordinator {
            me,
            policy,
            epoch,
            peers: BTreeMap::new(),
            staging: None,
            last_switch: None,
            retry: None,
            actions: VecDeque::new(),
        }
    }

    /// The epoch this replica is in.
    pub fn epoch(&self) -> EpochId {
        self.epoch
    }

    /// The compaction policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The epoch being fetched and the peer it comes from, if any.
    #[cfg(test)]
    pub fn staging(&self) -> Option<(EpochId, NodeBytes)> {
        self.staging
    }

    /// Whether `peer` is known to be in this replica's epoch (only then are changes and sync
    /// messages exchanged with it).
    pub fn in_step(&self, peer: &NodeBytes) -> bool {
        self.peers.get(peer) == Some(&Some(self.epoch))
    }

    /// A data stream to `peer` is open.
    pub fn peer_up(&mut self, peer: NodeBytes) {
        self.peers.insert(peer, None);
        self.actions.push_back(Action::Announce { to: peer });
    }

    /// The data stream to `peer` is gone.
    pub fn peer_down(&mut self, peer: &NodeBytes) {
        self.peers.remove(peer);
        if self.staging.is_some_and(|(_, from)| from == *peer) {
            self.staging = None;
            self.stage_best();
        }
    }

    /// `peer` announced it is in `epoch`.
    pub fn peer_epoch(&mut self, peer: NodeBytes, epoch: EpochId) {
        let before = self.peers.insert(peer, Some(epoch));
        if epoch == self.epoch {
            if before != Some(Some(epoch)) {
                self.actions.push_back(Action::Resync { peer });
            }
        } else if epoch > self.epoch && self.staging.is_none_or(|(e, _)| e < epoch) {
            self.staging = Some((epoch, peer));
            self.actions.push_back(Action::Stage { epoch, from: peer });
        }
    }

    /// The replica could not use what it fetched (the peer sent something broken): forget it
    /// and fetch from someone else if possible.
    pub fn staging_failed(&mut self) {
        if let Some((_, from)) = self.staging.take() {
            self.peers.insert(from, None);
        }
        self.stage_best();
    }

    /// The replica could not switch to the epoch it fetched or cut, at time `now`, for a
    /// reason of its own (its store failed to commit): the peers did nothing wrong, so unlike
    /// [`Coordinator::staging_failed`] their epochs are kept. The epoch is fetched again on a
    /// tick, after a delay that doubles with each failure in a row (1 s to 1 min), so that a
    /// full disk does not make the replica fetch a whole document every second.
    pub fn switch_failed(&mut self, now: Duration) {
        self.staging = None;
        let delay = self
            .retry
            .map_or(RETRY_FIRST, |(_, d)| (d * 2).min(RETRY_MAX));
        self.retry = Some((now + delay, delay));
    }

    /// The replica switched to `epoch` (after a `Stage` or a `Cut`) at time `now`.
    pub fn switched(&mut self, epoch: EpochId, now: Duration) {
        self.epoch = epoch;
        self.last_switch = Some(now);
        self.retry = None;
        if self.staging.is_some_and(|(e, _)| e <= epoch) {
            self.staging = None;
        }
        let peers: Vec<(NodeBytes, Option<EpochId>)> =
            self.peers.iter().map(|(p, e)| (*p, *e)).collect();
        for (peer, e) in peers {
            self.actions.push_back(Action::Announce { to: peer });
            if e == Some(epoch) {
                self.actions.push_back(Action::Resync { peer });
            }
        }
        self.stage_best();
    }

    /// Periodic check, with this node's leadership (`Some(term)` if it leads) and store size.
    /// A leader whose store needs it cuts a new epoch, unless a greater one is already known.
    pub fn tick(&mut self, now: Duration, leading: Option<u64>, usage: Usage) {
        if let Some((at, delay)) = self.retry {
            if now < at {
                return;
            }
            // Still failing: the next retry waits longer (reset by `switched`).
            self.retry = Some((Duration::ZERO, delay));
            self.stage_best();
        }
        if !self.policy.automatic || !self.policy.wants_compaction(usage) {
            return;
        }
        if self
            .last_switch
            .is_some_and(|t| now.saturating_sub(t) < self.policy.min_interval)
        {
            return;
        }
        self.cut(leading);
    }

    /// A compaction requested by the user (or forwarded by a follower). Returns false if this
    /// replica cannot cut now (it does not lead, or it is adopting a greater epoch).
    pub fn request(&mut self, leading: Option<u64>) -> bool {
        self.cut(leading)
    }

    fn cut(&mut self, leading: Option<u64>) -> bool {
        let Some(term) = leading else { return false };
        if self.staging.is_some()
            || self
                .peers
                .values()
                .any(|e| e.is_some_and(|e| e > self.epoch))
        {
            // A greater epoch exists: adopting it comes first.
            return false;
        }
        let epoch = self.epoch.next(term, self.me);
        self.actions.push_back(Action::Cut { epoch });
        true
    }

    /// Pops the oldest pending action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Starts fetching the greatest epoch a connected peer announced, if it beats ours.
    fn stage_best(&mut self) {
        if self.staging.is_some() {
            return;
        }
        let best = self
            .peers
            .iter()
            .filter_map(|(p, e)| e.map(|e| (e, *p)))
            .filter(|(e, _)| *e > self.epoch)
            .max();
        if let Some((epoch, from)) = best {
            self.staging = Some((epoch, from));
            self.actions.push_back(Action::Stage { epoch, from });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(hash: u8, hlc: u64) -> Entry {
        Entry {
            hash: [hash; 16],
            hlc,
            origin: [0; 32],
        }
    }

    #[test]
    fn epochs_order_by_term_first() {
        let a = EpochId::ZERO.next(5, [1; 32]).next(5, [1; 32]);
        let b = EpochId::ZERO.next(6, [0; 32]);
        assert_eq!(a.n, 2);
        assert!(b > a, "a newer term fences off an older leader's epochs");
        assert_ne!(a.genesis_actor(), b.genesis_actor());
        // A leader whose term is behind the epoch's still moves forward.
        assert!(b.next(3, [2; 32]) > b);
    }

    #[test]
    fn carry_keeps_what_beats_the_new_document() {
        let new: BTreeMap<&str, Entry> =
            [("same", e(1, 10)), ("newer", e(2, 20)), ("old", e(3, 5))]
                .into_iter()
                .collect();
        let old = vec![
            ("same".to_string(), e(1, 10)),
            ("newer".to_string(), e(9, 15)),
            ("old".to_string(), e(4, 6)),
            ("missing".to_string(), e(5, 1)),
            (
                "gone".to_string(),
                Entry {
                    hash: [0; 16],
                    ..e(0, 1)
                },
            ),
        ];
        let policy = Policy::default();
        let now = 1u64 << 40;
        let got = carry(
            old,
            |k| new.get(k).copied(),
            &policy,
            Some(Hlc::millis(now)),
        );
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["old", "missing", "gone"]);
        // A tombstone past its TTL is forgotten.
        let later = Hlc::millis(1) + policy.tombstone_ttl.as_millis() as u64 + 1;
        let got = carry(
            vec![(
                "gone".to_string(),
                Entry {
                    hash: [0; 16],
                    ..e(0, 1)
                },
            )],
            |_| None,
            &policy,
            Some(later),
        );
        assert!(got.is_empty());
    }

    /// Issue 15: a leader whose clock runs 40 days ahead must not drop a one-minute-old
    /// tombstone. Expiry goes by the earlier of its clock and its peers' median
    /// ([`crate::clock::expiry_clock`]), and not at all while no peer clock is measured.
    #[test]
    fn a_leader_whose_clock_runs_ahead_keeps_a_fresh_tombstone() {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        let real_now = 1_700_000_000_000u64;
        let fresh = Entry {
            hash: [0; 16],
            ..e(0, (real_now - 60_000) << 16)
        };
        let entries = vec![("gone".to_string(), fresh)];
        let policy = Policy::default();
        let leader = real_now + 40 * DAY_MS;
        // Judged by the skewed clock alone (the old behaviour), it would be dropped.
        assert!(genesis_entries(entries.clone(), &policy, Some(leader)).is_empty());
        // With its peers' clocks measured 40 days behind it, it is kept...
        let offsets = [-(40 * DAY_MS as i64), -(40 * DAY_MS as i64) + 3];
        for peers in [&offsets[..1], &offsets[..]] {
            let now = crate::clock::expiry_clock(leader, peers);
            assert_eq!(genesis_entries(entries.clone(), &policy, now), entries);
            assert!(carry(entries.clone(), |_| None, &policy, now).len() == 1);
        }
        // ...and kept by a leader alone, which cannot tell its clock is wrong.
        let alone = crate::clock::expiry_clock(leader, &[]);
        assert_eq!(genesis_entries(entries.clone(), &policy, alone), entries);
        // Once really past the TTL, by the peers' clocks too, it goes.
        let later = leader + 31 * DAY_MS;
        let now = crate::clock::expiry_clock(later, &offsets);
        assert!(genesis_entries(entries, &policy, now).is_empty());
    }

    #[test]
    fn a_replica_adopts_the_greatest_epoch_it_hears_of() {
        let me = [1; 32];
        let mut c = Coordinator::new(me, EpochId::ZERO, Policy::default());
        c.peer_up([2; 32]);
        c.peer_up([3; 32]);
        assert_eq!(c.poll_action(), Some(Action::Announce { to: [2; 32] }));
        assert_eq!(c.poll_action(), Some(Action::Announce { to: [3; 32] }));
        let e1 = EpochId::ZERO.next(1, [2; 32]);
        let e2 = e1.next(2, [3; 32]);
        c.peer_epoch([2; 32], e1);
        assert_eq!(
            c.poll_action(),
            Some(Action::Stage {
                epoch: e1,
                from: [2; 32]
            })
        );
        c.peer_epoch([3; 32], e2);
        assert_eq!(
            c.poll_action(),
            Some(Action::Stage {
                epoch: e2,
                from: [3; 32]
            })
        );
        // The peer it fetched from leaves: nobody else has e2, so it fetches e1 instead.
        c.peer_down(&[3; 32]);
        assert_eq!(
            c.poll_action(),
            Some(Action::Stage {
                epoch: e1,
                from: [2; 32]
            })
        );
        c.switched(e1, Duration::from_secs(1));
        assert_eq!(c.poll_action(), Some(Action::Announce { to: [2; 32] }));
        assert_eq!(c.poll_action(), Some(Action::Resync { peer: [2; 32] }));
        assert!(c.in_step(&[2; 32]));
        assert_eq!(c.poll_action(), None);
    }

    #[test]
    fn only_a_leader_cuts_and_not_while_a_greater_epoch_is_known() {
        let me = [1; 32];
        let mut c = Coordinator::new(me, EpochId::ZERO, Policy::default());
        let big = Usage {
            history_bytes: 10 << 20,
            live_bytes: 1000,
        };
        c.tick(Duration::ZERO, None, big);
        assert_eq!(c.poll_action(), None, "followers never cut");
        c.tick(Duration::ZERO, Some(3), Usage::default());
        assert_eq!(c.poll_action(), None, "nothing to compact");
        c.tick(Duration::ZERO, Some(3), big);
        let e1 = EpochId::ZERO.next(3, me);
        assert_eq!(c.poll_action(), Some(Action::Cut { epoch: e1 }));
        c.switched(e1, Duration::ZERO);
        c.tick(Duration::from_secs(1), Some(3), big);
        assert_eq!(c.poll_action(), None, "too soon after the last epoch");
        c.peer_up([2; 32]);
        c.poll_action();
        let e9 = EpochId::ZERO.next(9, [2; 32]);
        c.peer_epoch([2; 32], e9);
        assert_eq!(
            c.poll_action(),
            Some(Action::Stage {
                epoch: e9,
                from: [2; 32]
            })
        );
        assert!(
            !c.request(Some(3)),
            "adopting the greater epoch comes first"
        );
    }

    /// A switch that failed for a local reason (the store could not commit it) keeps the
    /// peer's epoch and fetches it again after a delay that grows while it keeps failing.
    /// (`staging_failed` would forget the peer's epoch: with no other peer in it, the replica
    /// would never switch, and never replicate with that peer again.)
    #[test]
    fn a_switch_that_failed_locally_is_retried_with_backoff() {
        let me = [1; 32];
        let peer = [2; 32];
        let mut c = Coordinator::new(me, EpochId::ZERO, Policy::manual());
        c.peer_up(peer);
        assert_eq!(c.poll_action(), Some(Action::Announce { to: peer }));
        let e1 = EpochId::ZERO.next(5, peer);
        c.peer_epoch(peer, e1);
        let stage = Some(Action::Stage {
            epoch: e1,
            from: peer,
        });
        assert_eq!(c.poll_action(), stage);
        let secs = Duration::from_secs;
        let quiet = Usage::default();

        c.switch_failed(secs(10));
        assert_eq!(c.staging(), None);
        c.tick(secs(10), None, quiet);
        assert_eq!(c.poll_action(), None, "not at once");
        c.tick(secs(11), None, quiet);
        assert_eq!(c.poll_action(), stage, "after 1 s");

        c.switch_failed(secs(12));
        c.tick(secs(13), None, quiet);
        assert_eq!(c.poll_action(), None, "the second delay is longer");
        c.tick(secs(14), None, quiet);
        assert_eq!(c.poll_action(), stage, "after 2 s");

        c.switched(e1, secs(20));
        assert!(c.in_step(&peer));
        let e2 = e1.next(6, peer);
        c.poll_action();
        c.poll_action();
        c.peer_epoch(peer, e2);
        assert_eq!(
            c.poll_action(),
            Some(Action::Stage {
                epoch: e2,
                from: peer
            })
        );
        c.switch_failed(secs(30));
        c.tick(secs(31), None, quiet);
        assert_eq!(
            c.poll_action(),
            Some(Action::Stage {
                epoch: e2,
                from: peer
            }),
            "a success resets the delay"
        );
    }
}
