//! Coordinator election: the Bully algorithm with fencing terms, as a pure,
//! sans-IO state machine.
//!
//! # Model
//!
//! Every node has an ID of type `I` (`Ord`). The coordinator ("leader") is the
//! live node with the greatest ID. This module contains no I/O, no clock and no
//! randomness: the driver feeds it events (`peer_up`, `peer_down`, `handle`,
//! `tick`) together with the current monotonic time `now`, and drains the
//! resulting [`Output`]s with [`Election::poll_output`]. That makes the
//! protocol fully deterministic and lets the tests in `sim_tests.rs` run whole
//! swarms in virtual time.
//!
//! # Terms
//!
//! Terms are fencing tokens. Every message carries a term and every received
//! message raises this node's *highest seen* term ([`Election::term`]); the
//! driver must persist it (see [`Output::PersistTerm`]) so that a restarted
//! node never goes backwards. A node that claims leadership uses
//! `highest seen + 1`. The per-node guarantee is:
//!
//! > Every `LeaderChanged { leader: Some(l), term }` a node emits carries a
//! > term that is `>=` every term it emitted before with a leader, and strictly
//! > greater than every term it emitted with a *different* leader.
//!
//! So terms never go back, and a node never reports two leaders with one term.
//! This holds across restarts as long as the driver persisted the term and the
//! last leader this node reported ([`Output::PersistLeader`]) and hands both
//! back on restart ([`Election::new`], [`Election::with_last_leader`]).
//!
//! # The term changes when leadership changes, not otherwise
//!
//! A term is only claimed when a node takes leadership. Nodes joining or
//! restarting do not make the leader claim again: a node that hears the leader
//! it last reported (before a restart too), at a term not below the one it
//! reported it with, follows it at that term, and a lower node that joins
//! follows whatever leader it hears with a term that is news to it. A
//! restarted *leader* claims a new term: its reign ended when it stopped, and
//! the others may have elected someone else meanwhile. The leader re-claims a
//! greater term only when asked to ([`Message::TermHint`]): by a node that
//! already saw its term used by someone else, or that cannot tell (a node
//! whose persisted record predates [`Output::PersistLeader`], or a node that
//! last reported a different leader).
//!
//! What terms can *not* guarantee on their own (no protocol can, when a lost
//! message is indistinguishable from a crashed peer) is that two nodes never
//! *claim* the same term concurrently: two nodes that cannot hear each other
//! may both compute `highest + 1` from the same history. Such a tie is
//! resolved as soon as they exchange any message (the lower one steps down and
//! the higher one re-announces with a larger term), and no third node ever
//! accepts two different leaders with the same term.
//!
//! # State machine
//!
//! ```text
//!   Idle ──timeout / Election from below / Leader from below──▶ start_election
//!   start_election ──no higher peer──▶ Leader
//!   start_election ──Election sent to higher peers──▶ Candidate
//!   Candidate ──Answer──▶ AwaitingCoordinator
//!   Candidate ──answer timeout──▶ Leader
//!   AwaitingCoordinator ──timeout──▶ start_election
//!   any ──acceptable Leader{t} from higher──▶ Follower
//!   Follower ──heartbeat timeout / peer_down(leader)──▶ start_election
//!   Leader ──acceptable Leader{t} from higher──▶ Follower
//!   Leader ──stale Leader{t} from higher──▶ AwaitingCoordinator (+TermHint)
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod sim_tests;

/// Timing configuration.
///
/// `leader_timeout` should be several times `heartbeat_interval` (e.g. 3–5x):
/// a follower declares the leader lost after `leader_timeout` without a
/// heartbeat, so the ratio decides how many consecutive lost heartbeats are
/// tolerated. Nonsensical values never panic; they only make the protocol
/// churn.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How often a leader sends `Leader` heartbeats to every peer; also how
    /// long a candidate waits for an `Answer` before claiming leadership
    /// (half of it when the only node that could answer is the leader it just
    /// lost, see [`Config::lost_leader_wait`]).
    pub heartbeat_interval: Duration,
    /// How long a node without a leader waits to hear one (at start-up, or
    /// after an `Answer`), and how long a follower tolerates silence from its
    /// leader.
    pub leader_timeout: Duration,
}

impl Config {
    /// How long a follower that lost its leader waits for an `Answer` when
    /// that leader is the only higher node it knows: half a heartbeat
    /// interval.
    ///
    /// This is the failover path. A follower notices a crashed leader up to
    /// `leader_timeout` after the crash, and the swarm should agree on the new
    /// leader within one more heartbeat interval (issue 7, BENCHMARKS.md W7);
    /// waiting a whole interval put failover exactly on that bound. The wait
    /// cannot be dropped altogether: the leader may be alive with its
    /// heartbeats lost, and its `Answer` (one round trip) is what keeps a
    /// spurious timeout from unseating it. Any other candidate waits a whole
    /// interval, because a shorter wait makes two live candidates claim the
    /// same term more often on a slow, lossy network (the simulation's
    /// dual-leadership count triples).
    pub fn lost_leader_wait(&self) -> Duration {
        self.heartbeat_interval / 2
    }
}

impl Default for Config {
    /// One-second heartbeats, leader considered lost after four seconds.
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_secs(1),
            leader_timeout: Duration::from_secs(4),
        }
    }
}

/// Wire messages between peers (serialized by the caller with serde/postcard).
/// Every message carries the sender's highest known term, except `Leader`,
/// which carries the term the sender claims leadership with (its fencing
/// token); receivers raise their highest seen term from all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "I am starting an election": sent only to peers with a greater ID.
    Election {
        /// The sender's highest seen term.
        term: u64,
    },
    /// "I am alive and higher than you; wait for a coordinator": the reply to
    /// `Election`.
    Answer {
        /// The sender's highest seen term.
        term: u64,
    },
    /// "I am the leader with this term": sent when claiming leadership, as a
    /// periodic heartbeat, and to newly connected peers.
    Leader {
        /// The term the sender leads with.
        term: u64,
    },
    /// "Your `Leader` term is not above what I have seen; re-announce with a
    /// greater one."
    TermHint {
        /// The sender's highest seen term.
        term: u64,
    },
}

/// What the driver must do, drained with [`Election::poll_output`] in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<I> {
    /// Send `msg` to peer `to`. Best effort: losing it is tolerated.
    Send {
        /// Destination peer.
        to: I,
        /// The message to deliver.
        msg: Message,
    },
    /// The (leader, term) pair this node reports changed. `leader` None = no leader known right now.
    ///
    /// With `Some(leader)`, `term` is the leader's fencing term. With `None`,
    /// `term` is the term of the leadership that just ended
    /// ([`Election::leader_term`]).
    LeaderChanged {
        /// The new leader, or `None` while there is none.
        leader: Option<I>,
        /// See above.
        term: u64,
    },
    /// The highest term seen increased; the driver persists it (so it survives restarts) before/when sending.
    ///
    /// It is always queued before any `Send` or `LeaderChanged` that depends
    /// on it, so persisting outputs in FIFO order is sufficient.
    PersistTerm(u64),
    /// This node is about to report `leader` with `term` for the first time
    /// (queued right before that `LeaderChanged`). The driver persists it and
    /// hands it to [`Election::with_last_leader`] on restart, so that a
    /// restarted node can follow the same leader at the same term instead of
    /// making it claim a new one, and never follows a different leader at a
    /// term it already reported someone with.
    PersistLeader {
        /// The leader (possibly this node).
        leader: I,
        /// The term it is reported with.
        term: u64,
    },
}

/// Coarse view of the state machine, for observability and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No leader known and no election running (fresh start-up): waiting up
    /// to `leader_timeout` to hear a leader.
    Idle,
    /// Sent `Election` to higher peers; waiting up to `heartbeat_interval`
    /// (or [`Config::lost_leader_wait`]) for an `Answer`.
    Candidate,
    /// A higher node is alive (it answered, or announced itself with a stale
    /// term); waiting up to `leader_timeout` for its `Leader` message.
    AwaitingCoordinator,
    /// Following a higher leader.
    Follower,
    /// This node is the leader.
    Leader,
}

/// Internal role; each variant owns the single deadline that matters in it,
/// so `next_deadline` can never disagree with the state.
#[derive(Debug, Clone)]
enum Role<I> {
    Idle { deadline: Duration },
    Candidate { deadline: Duration },
    AwaitingCoordinator { deadline: Duration },
    Follower { leader: I, deadline: Duration },
    Leader { next_heartbeat: Duration },
}

/// Bully election state machine for one node. See the module docs.
#[derive(Debug, Clone)]
pub struct Election<I> {
    me: I,
    config: Config,
    /// Highest term seen in any message or claim (persisted by the driver).
    term: u64,
    /// Term of the current (or, when there is none, the last) leader.
    leader_term: u64,
    role: Role<I>,
    peers: BTreeSet<I>,
    outputs: VecDeque<Output<I>>,
    /// Last `LeaderChanged` with `Some` this node emitted (in this
    /// incarnation, or restored with [`Election::with_last_leader`]). Used to
    /// re-accept the same leader at the same term after a spurious timeout or
    /// a restart (which is fencing-safe and avoids a term bump), and to check
    /// the fencing invariant in debug builds.
    last_announced: Option<(I, u64)>,
    /// The peer whose message first raised `term` to its current value
    /// (`None` if it came from our own claim or from disk). Lets us accept
    /// `Leader{t}` with `t == term` from that very peer: a leader's `Answer`
    /// can overtake its `Leader` message, and without this the overtaken
    /// announcement would look stale and force a needless term bump.
    term_source: Option<I>,
    /// See [`Election::with_startup_grace`].
    startup_grace: Duration,
    /// Idle past `leader_timeout`, alone, waiting out the startup grace.
    in_grace: bool,
}

impl<I: Ord + Clone + std::fmt::Debug> Election<I> {
    /// Creates the state machine for node `me`.
    ///
    /// `persisted_term` is the last term the driver persisted from
    /// [`Output::PersistTerm`] (0 on first start); starting from it guarantees
    /// a restarted node never reuses a term. The node starts with no leader
    /// and no peers, and waits up to `leader_timeout` to hear a leader before
    /// starting an election (so a node joining a stable swarm does not
    /// disturb it).
    pub fn new(me: I, persisted_term: u64, config: Config, now: Duration) -> Self {
        Election {
            me,
            config,
            term: persisted_term,
            leader_term: 0,
            role: Role::Idle {
                deadline: now.saturating_add(config.leader_timeout),
            },
            peers: BTreeSet::new(),
            outputs: VecDeque::new(),
            last_announced: None,
            term_source: None,
            startup_grace: Duration::ZERO,
            in_grace: false,
        }
    }

    /// Restores the leader this node last reported before a restart and the
    /// term it reported it with (what the driver persisted from
    /// [`Output::PersistLeader`]). Call it right after [`Election::new`].
    ///
    /// With it, a restarted follower that hears the same leader at that term
    /// follows it without asking it to claim a new term; without it (first
    /// start, or a record lost), the node conservatively asks for a new term
    /// when it hears a leader whose term it has already seen. A term above the
    /// persisted highest term (an inconsistent record) raises it, so terms
    /// never go back.
    pub fn with_last_leader(mut self, leader: I, term: u64) -> Self {
        self.observe_term(term, None);
        self.leader_term = term;
        self.last_announced = Some((leader, term));
        self
    }

    /// Keeps a node that has no connected peer from claiming leadership before
    /// `until` (time since start), while it is still starting up. The driver
    /// sets it when the node knows other members it has not reached yet (a
    /// restart): reaching them can take longer than `leader_timeout` (a dial
    /// that waits for a slow or busy peer), and a node that claimed alone in
    /// the meantime would make the real leader claim a new term when they
    /// meet. A node that reaches a peer, or is still alone at `until`, goes on
    /// as without it. Call it right after [`Election::new`].
    pub fn with_startup_grace(mut self, until: Duration) -> Self {
        self.startup_grace = until;
        self
    }

    /// The leader this node last reported and its term, if any (what the
    /// driver persists on [`Output::PersistLeader`]).
    pub fn last_leader(&self) -> Option<(&I, u64)> {
        self.last_announced.as_ref().map(|(l, t)| (l, *t))
    }

    /// An authenticated connection to `peer` exists (calling it again for an
    /// already known peer is treated as a reconnect).
    pub fn peer_up(&mut self, peer: I, now: Duration) {
        if peer == self.me {
            return;
        }
        self.peers.insert(peer.clone());
        if let Role::Idle { deadline } = self.role {
            if self.in_grace {
                // The first peer came, after the node had already listened for a whole
                // `leader_timeout`: a leader announces itself to a new peer at once, so one
                // heartbeat interval is enough to hear it before electing.
                self.in_grace = false;
                self.role = Role::Idle {
                    deadline: deadline.min(now.saturating_add(self.config.heartbeat_interval)),
                };
            }
        }
        match self.role {
            // Tell newcomers (and healed partitions) at once instead of making
            // them wait for a timeout; a stale lower leader on the other side
            // steps down when it hears this.
            Role::Leader { .. } => {
                let term = self.leader_term;
                self.send(peer, Message::Leader { term });
            }
            // A higher node appeared mid-election: it must get the chance to
            // bully us, otherwise we might claim leadership over it.
            Role::Candidate { .. } if peer > self.me => {
                let term = self.term;
                self.send(peer, Message::Election { term });
            }
            _ => {}
        }
    }

    /// The connection to `peer` is gone. Losing the leader is handled at once
    /// (as if its heartbeat timed out); other peers are simply forgotten.
    pub fn peer_down(&mut self, peer: &I, now: Duration) {
        self.peers.remove(peer);
        if matches!(&self.role, Role::Follower { leader, .. } if leader == peer) {
            self.leader_lost(now);
        }
    }

    /// Handles a message from `from`. Never panics, whatever the content or
    /// sender (including senders that are not in the peer set, which can
    /// happen when the driver delivers a message before `peer_up`).
    pub fn handle(&mut self, from: I, msg: Message, now: Duration) {
        // Compare against the highest term *before* this message: a Leader
        // message is only acceptable from a new leader if its term is news.
        let seen_before = self.term;
        let msg_term = match msg {
            Message::Election { term }
            | Message::Answer { term }
            | Message::Leader { term }
            | Message::TermHint { term } => term,
        };
        self.observe_term(msg_term, Some(&from));
        if from == self.me {
            // Our own message echoed back (driver bug): nothing to react to.
            return;
        }
        match msg {
            Message::Election { .. } => self.on_election(from, now),
            Message::Answer { .. } => self.on_answer(from, now),
            Message::Leader { term } => self.on_leader(from, term, seen_before, now),
            Message::TermHint { term } => self.on_term_hint(term, now),
        }
    }

    /// Advances timers. Call it at (or after) [`Election::next_deadline`];
    /// calling it early is harmless.
    pub fn tick(&mut self, now: Duration) {
        match self.role {
            Role::Idle { deadline } if now >= deadline && now < self.startup_grace => {
                if self.peers.is_empty() {
                    // Still reaching the members it knows: wait for them, not longer
                    // than the grace.
                    self.role = Role::Idle {
                        deadline: self.startup_grace,
                    };
                    self.in_grace = true;
                } else {
                    self.start_election(now);
                }
            }
            Role::Idle { deadline } | Role::AwaitingCoordinator { deadline } => {
                if now >= deadline {
                    // Nobody announced themselves in time: bully our way up.
                    self.start_election(now);
                }
            }
            Role::Candidate { deadline } => {
                if now >= deadline {
                    // No higher node answered: we are the greatest live ID.
                    self.become_leader(now);
                }
            }
            Role::Follower { deadline, .. } => {
                if now >= deadline {
                    self.leader_lost(now);
                }
            }
            Role::Leader { next_heartbeat } => {
                if now >= next_heartbeat {
                    self.broadcast_leader();
                    // Schedule from `now`, not from the old deadline, so a
                    // late tick does not cause a burst of catch-up heartbeats.
                    self.role = Role::Leader {
                        next_heartbeat: now.saturating_add(self.config.heartbeat_interval),
                    };
                }
            }
        }
    }

    /// When [`Election::tick`] must next be called. Every state has a timer,
    /// so this is currently always `Some`.
    pub fn next_deadline(&self) -> Option<Duration> {
        Some(match self.role {
            Role::Idle { deadline }
            | Role::Candidate { deadline }
            | Role::AwaitingCoordinator { deadline }
            | Role::Follower { deadline, .. } => deadline,
            Role::Leader { next_heartbeat } => next_heartbeat,
        })
    }

    /// Pops the oldest queued output. Drain it completely after every call
    /// into the state machine.
    pub fn poll_output(&mut self) -> Option<Output<I>> {
        self.outputs.pop_front()
    }

    /// The current leader (possibly this node), if any.
    pub fn leader(&self) -> Option<&I> {
        match &self.role {
            Role::Follower { leader, .. } => Some(leader),
            Role::Leader { .. } => Some(&self.me),
            _ => None,
        }
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// Highest term seen (the value the driver persists).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Term of the current leader (0 if none ever). While there is no leader
    /// it is the term of the last one.
    pub fn leader_term(&self) -> u64 {
        self.leader_term
    }

    /// Currently connected peers, in ascending ID order.
    pub fn peers(&self) -> impl Iterator<Item = &I> {
        self.peers.iter()
    }

    /// This node's ID.
    pub fn me(&self) -> &I {
        &self.me
    }

    /// The timing configuration this node runs with.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Coarse phase of the state machine.
    pub fn phase(&self) -> Phase {
        match self.role {
            Role::Idle { .. } => Phase::Idle,
            Role::Candidate { .. } => Phase::Candidate,
            Role::AwaitingCoordinator { .. } => Phase::AwaitingCoordinator,
            Role::Follower { .. } => Phase::Follower,
            Role::Leader { .. } => Phase::Leader,
        }
    }

    // ----- message handlers -------------------------------------------------

    fn on_election(&mut self, from: I, now: Duration) {
        // Elections only ever go upwards; one from a higher node is a protocol
        // violation, and answering it would wrongly silence that node.
        if from > self.me {
            return;
        }
        let term = self.term;
        self.send(from.clone(), Message::Answer { term });
        match self.role {
            Role::Leader { .. } => {
                // Short-cut: tell it who leads instead of making it wait.
                let term = self.leader_term;
                self.send(from, Message::Leader { term });
            }
            // Fresh node without a leader: the election from below is the
            // hint that one is needed.
            Role::Idle { .. } => self.start_election(now),
            // Already electing: the running election covers it.
            Role::Candidate { .. } | Role::AwaitingCoordinator { .. } => {}
            // Following a live higher leader: the sender also sent its
            // Election to that leader, which answers with `Leader` directly.
            // Starting our own election here (classic Bully) would only make
            // us drop a healthy leader and force a term bump.
            Role::Follower { .. } => {}
        }
    }

    fn on_answer(&mut self, from: I, now: Duration) {
        if from < self.me {
            return; // only higher nodes answer; ignore nonsense
        }
        if !self.peers.contains(&from) {
            // A stale answer from a node whose connection is gone (it was in
            // flight when the node left): waiting a `leader_timeout` for its
            // announcement would be waiting for nobody.
            return;
        }
        if let Role::Candidate { .. } = self.role {
            self.role = Role::AwaitingCoordinator {
                deadline: now.saturating_add(self.config.leader_timeout),
            };
        }
    }

    fn on_leader(&mut self, from: I, t: u64, seen_before: u64, now: Duration) {
        if from < self.me {
            match self.role {
                // Bully the lower claimant: it steps down when it hears us
                // (possibly via a TermHint round if our term is stale to it).
                Role::Leader { .. } => {
                    let term = self.leader_term;
                    self.send(from, Message::Leader { term });
                }
                Role::Idle { .. } => self.start_election(now),
                Role::Candidate { .. } | Role::AwaitingCoordinator { .. } => {}
                // Our live leader is higher than both of us and announces
                // itself to the lower claimant (peer_up / heartbeats), which
                // then steps down; an election here would only disrupt.
                Role::Follower { .. } => {}
            }
            return;
        }

        // from > me from here on.
        if !self.peers.contains(&from) {
            // A claim from a node we have no connection to: a message that was
            // in flight when the connection went down (typically a leader's
            // last heartbeat, after it left), or one delivered before
            // `peer_up`. Following it, even at a term we accepted before,
            // would mean waiting a whole `leader_timeout` for a node we
            // cannot hear, and asking it for a new term is pointless. Its term
            // was recorded above; if it is alive, its next message over the
            // connection is judged on its merits.
            return;
        }
        if let Role::Follower { leader, .. } = &self.role {
            if *leader == from {
                if t >= self.leader_term {
                    // Heartbeat (possibly with a re-announced, higher term).
                    self.role = Role::Follower {
                        leader: from.clone(),
                        deadline: now.saturating_add(self.config.leader_timeout),
                    };
                    if t > self.leader_term {
                        self.leader_term = t;
                        self.announce(Some(from), t);
                    }
                }
                // t < leader_term: a delayed message from an older reign.
                return;
            }
            if *leader > from {
                // We follow a live, even higher leader; `from` will hear it and
                // step down.
                return;
            }
        }

        // `from` is higher than us and than whoever we follow.
        // Re-accepting the leader we last announced at a term not below the
        // announced one is fencing-safe, so a spurious timeout does not force
        // a term bump.
        let same_reign = matches!(&self.last_announced, Some((l, lt)) if *l == from && t >= *lt);
        // `from` itself told us about `t` first (typically its own Answer
        // overtook this Leader message), and we never announced anyone else
        // at `t`: the term is not news, but accepting it is fencing-safe.
        let own_term = t == seen_before
            && self.term_source.as_ref() == Some(&from)
            && self.last_announced.as_ref().is_none_or(|(_, lt)| *lt < t);
        if t > seen_before || same_reign || own_term {
            self.follow(from, t, now);
        } else {
            // The term is not news to us: accepting it could mean announcing
            // two different leaders with the same term. Ask it to re-announce
            // with a greater one.
            let term = self.term;
            self.send(from, Message::TermHint { term });
            match self.role {
                Role::Leader { .. } => self.step_down(now),
                // A higher node is alive; wait for its re-announcement instead
                // of claiming leadership over it.
                Role::Idle { .. } | Role::Candidate { .. } | Role::AwaitingCoordinator { .. } => {
                    self.role = Role::AwaitingCoordinator {
                        deadline: now.saturating_add(self.config.leader_timeout),
                    };
                }
                // Keep following our current (lower) leader until the higher
                // one re-announces; no reason to go leaderless meanwhile.
                Role::Follower { .. } => {}
            }
        }
    }

    fn on_term_hint(&mut self, t: u64, now: Duration) {
        // `observe_term` already raised our highest seen term.
        if self.is_leader() && t >= self.leader_term {
            // Someone refuses our term; claim a fresh one.
            self.become_leader(now);
        }
    }

    // ----- transitions ------------------------------------------------------

    /// Raises the highest seen term; the driver must persist increases.
    fn observe_term(&mut self, t: u64, source: Option<&I>) {
        if t > self.term {
            self.term = t;
            self.term_source = source.cloned();
            self.outputs.push_back(Output::PersistTerm(t));
        }
    }

    fn start_election(&mut self, now: Duration) {
        self.start_election_after(now, None);
    }

    /// Starts an election; `lost` is the leader whose loss started it.
    fn start_election_after(&mut self, now: Duration, lost: Option<&I>) {
        // Callers only get here without a leader (Idle, AwaitingCoordinator,
        // or right after leader_lost emitted None).
        let higher: Vec<I> = self
            .peers
            .range((Bound::Excluded(&self.me), Bound::Unbounded))
            .cloned()
            .collect();
        if higher.is_empty() {
            self.become_leader(now);
            return;
        }
        let wait = if higher.iter().all(|p| Some(p) == lost) {
            self.config.lost_leader_wait()
        } else {
            self.config.heartbeat_interval
        };
        let term = self.term;
        for p in higher {
            self.send(p, Message::Election { term });
        }
        self.role = Role::Candidate {
            deadline: now.saturating_add(wait),
        };
    }

    fn become_leader(&mut self, now: Duration) {
        // Saturating: a hostile u64::MAX term must not panic. (At the ceiling
        // fencing can no longer progress; that needs 2^64 elections.)
        let term = self.term.saturating_add(1);
        self.observe_term(term, None);
        self.leader_term = term;
        self.role = Role::Leader {
            next_heartbeat: now.saturating_add(self.config.heartbeat_interval),
        };
        self.announce(Some(self.me.clone()), term);
        self.broadcast_leader();
    }

    fn follow(&mut self, leader: I, t: u64, now: Duration) {
        self.leader_term = t;
        self.role = Role::Follower {
            leader: leader.clone(),
            deadline: now.saturating_add(self.config.leader_timeout),
        };
        self.announce(Some(leader), t);
    }

    /// Leader heard a higher node with a stale term: stop leading and wait for
    /// that node's re-announcement.
    fn step_down(&mut self, now: Duration) {
        self.role = Role::AwaitingCoordinator {
            deadline: now.saturating_add(self.config.leader_timeout),
        };
        self.announce(None, self.leader_term);
    }

    fn leader_lost(&mut self, now: Duration) {
        let lost = match &self.role {
            Role::Follower { leader, .. } => Some(leader.clone()),
            _ => None,
        };
        self.announce(None, self.leader_term);
        self.start_election_after(now, lost.as_ref());
    }

    fn broadcast_leader(&mut self) {
        let term = self.leader_term;
        let peers: Vec<I> = self.peers.iter().cloned().collect();
        for p in peers {
            self.send(p, Message::Leader { term });
        }
    }

    fn announce(&mut self, leader: Option<I>, term: u64) {
        if let Some(l) = &leader {
            // The fencing invariant, checked where it is produced.
            debug_assert!(
                match &self.last_announced {
                    None => true,
                    Some((prev, pt)) if prev == l => term >= *pt,
                    Some((_, pt)) => term > *pt || *pt == u64::MAX,
                },
                "fencing violated: {:?} after {:?}",
                (l, term),
                self.last_announced
            );
            if self.last_announced.as_ref() != Some(&(l.clone(), term)) {
                self.last_announced = Some((l.clone(), term));
                self.outputs.push_back(Output::PersistLeader {
                    leader: l.clone(),
                    term,
                });
            }
        }
        self.outputs
            .push_back(Output::LeaderChanged { leader, term });
    }

    fn send(&mut self, to: I, msg: Message) {
        self.outputs.push_back(Output::Send { to, msg });
    }
}
