//! Membership: the peers this node knows, which of them it is connected to, whom to dial and
//! when, which of two connections to one peer to keep, and what to tell peers about each other.
//!
//! A sans-IO state machine, like [`Election`](crate::election::Election): no sockets, no
//! clock, no randomness. The driver (the node task in [`super`]) feeds it what happened
//! ([`Membership::learn`], [`Membership::up`], [`Membership::down`],
//! [`Membership::dial_done`], [`Membership::peers_received`], [`Membership::tick`]) with the
//! time since the node started, and carries out the [`Output`]s it drains with
//! [`Membership::poll_output`]: dial, send a peer list, save an
//! address. The connections themselves (and anything else that does I/O) stay with the
//! driver, keyed by the same connection ids.
//!
//! # Rules
//!
//! - **One connection per pair.** Two nodes that dial each other at once end up with two
//!   connections; both keep the one dialed by the greater node ID, whatever order the two
//!   connections come up in on either side. A new connection dialed by the same side as the
//!   one kept replaces it (the old one is most likely dead: the peer restarted).
//! - **At most `max_peers` connections.** A new peer beyond it is refused; dials stop at it.
//! - **Redial with backoff.** A known peer that is not connected is dialed when due: at once
//!   when learned, then after 250 ms, doubling after each failed dial up to 2 s; a connection
//!   that got through resets the backoff, and one that ends makes the peer due 250 ms later.
//!   At most one dial per peer is in flight.
//! - **Peer exchange.** A new connection is sent the addresses of every connected peer. A
//!   peer that tells its own address (it dialed us, so we did not know it) is saved, and
//!   introduced to the other connected peers when it is news: two nodes that join through
//!   this one at the same moment then still meet.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use iroh::{endpoint::VarInt, EndpointAddr};

use super::conn::close;
use crate::doc::NodeBytes;

/// First and longest wait between dials of an unreachable peer.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Dial `peer` at `addr`, then report the outcome with [`Membership::dial_done`].
    Dial { peer: NodeBytes, addr: EndpointAddr },
    /// Send `to` these addresses (along with this node's own address).
    SendPeers {
        to: NodeBytes,
        known: Vec<EndpointAddr>,
    },
    /// Persist `peer`'s address, as the peer itself told it.
    SaveAddr { peer: NodeBytes, addr: EndpointAddr },
}

/// Whether a connection that came up is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Kept. `replaced`: the connection it replaces, which the driver closes (with
    /// `close::DUPLICATE`), if any; `None`
    /// means the peer is newly connected.
    Keep { replaced: Option<u64> },
    /// Not kept: close it with this code.
    Refuse(VarInt),
}

/// A peer this node knows how to reach.
#[derive(Debug)]
struct Known {
    addr: EndpointAddr,
    /// A dial is in flight.
    dialing: bool,
    backoff: Duration,
    /// Not dialed before this time.
    next_attempt: Duration,
}

/// The connection kept to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    conn_id: u64,
    /// This node dialed it.
    dialer: bool,
}

/// The membership state of one node (see the module documentation).
#[derive(Debug)]
pub(crate) struct Membership {
    me: NodeBytes,
    max_peers: usize,
    known: HashMap<NodeBytes, Known>,
    links: HashMap<NodeBytes, Link>,
    outputs: VecDeque<Output>,
}

impl Membership {
    /// A node `me` that keeps at most `max_peers` connections.
    pub fn new(me: NodeBytes, max_peers: usize) -> Self {
        Membership {
            me,
            max_peers,
            known: HashMap::new(),
            links: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Adds a peer to connect to, or updates its address. Returns whether the address is news
    /// (a new peer, or a changed non-empty address). The peer is dialed at the next
    /// [`Membership::tick`] if it is not connected.
    pub fn learn(&mut self, addr: EndpointAddr, now: Duration) -> bool {
        let id = *addr.id.as_bytes();
        if id == self.me {
            return false;
        }
        match self.known.get_mut(&id) {
            Some(k) => {
                if !addr.is_empty() && k.addr != addr {
                    k.addr = addr;
                    return true;
                }
                false
            }
            None => {
                self.known.insert(
                    id,
                    Known {
                        addr,
                        dialing: false,
                        backoff: BACKOFF_MIN,
                        next_attempt: now,
                    },
                );
                true
            }
        }
    }

    /// An authenticated connection `conn_id` to `peer` came up; `dialer` says whether this
    /// node dialed it. Decides whether it is kept (see "One connection per pair"). A kept one
    /// is sent the peer list.
    pub fn up(&mut self, peer: NodeBytes, conn_id: u64, dialer: bool, _now: Duration) -> Admit {
        if peer == self.me {
            return Admit::Refuse(close::PROTOCOL);
        }
        let replaced = match self.links.get(&peer) {
            None if self.links.len() >= self.max_peers => {
                return Admit::Refuse(close::TOO_MANY_PEERS)
            }
            None => None,
            Some(existing) if existing.dialer == dialer => Some(existing.conn_id),
            Some(existing) => {
                let dialer_id = if dialer { &self.me } else { &peer };
                if dialer_id != std::cmp::max(&self.me, &peer) {
                    return Admit::Refuse(close::DUPLICATE);
                }
                Some(existing.conn_id)
            }
        };
        self.links.insert(peer, Link { conn_id, dialer });
        if let Some(k) = self.known.get_mut(&peer) {
            k.backoff = BACKOFF_MIN;
        }
        self.outputs.push_back(Output::SendPeers {
            to: peer,
            known: self.peer_addrs(),
        });
        Admit::Keep { replaced }
    }

    /// Connection `conn_id` to `peer` ended. Returns true when it was the one kept (the peer
    /// is now disconnected); false for a connection already replaced or never kept.
    pub fn down(&mut self, peer: NodeBytes, conn_id: u64, now: Duration) -> bool {
        if self.links.get(&peer).is_none_or(|l| l.conn_id != conn_id) {
            return false;
        }
        self.links.remove(&peer);
        if let Some(k) = self.known.get_mut(&peer) {
            k.next_attempt = now + BACKOFF_MIN;
        }
        true
    }

    /// A dial this node started ([`Output::Dial`]) ended; `authenticated` says whether it got
    /// through the handshake (the connection itself is reported by [`Membership::up`]).
    pub fn dial_done(&mut self, peer: NodeBytes, authenticated: bool, now: Duration) {
        if let Some(k) = self.known.get_mut(&peer) {
            k.dialing = false;
            if !authenticated {
                k.next_attempt = now + k.backoff;
                k.backoff = (k.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// A connected peer sent its own address (`me`) and addresses it knows (`known`, of which
    /// at most `4 × max_peers` are taken). Messages from a peer that is not connected, or
    /// whose `me` is not its own, teach only the other addresses.
    pub fn peers_received(
        &mut self,
        from: NodeBytes,
        me: EndpointAddr,
        known: Vec<EndpointAddr>,
        now: Duration,
    ) {
        if me.id.as_bytes() == &from && self.links.contains_key(&from) {
            self.outputs.push_back(Output::SaveAddr {
                peer: from,
                addr: me.clone(),
            });
            // Until now the other peers could not be told about this one (its address was
            // unknown: it dialed us). Tell them, or two nodes that joined through us at the
            // same moment never meet.
            if self.learn(me.clone(), now) {
                for to in self.links.keys().filter(|p| **p != from) {
                    self.outputs.push_back(Output::SendPeers {
                        to: *to,
                        known: vec![me.clone()],
                    });
                }
            }
        }
        for a in known.into_iter().take(self.max_peers * 4) {
            self.learn(a, now);
        }
    }

    /// Dials known peers that are not connected and are due, within `max_peers`.
    pub fn tick(&mut self, now: Duration) {
        let mut budget = self.max_peers.saturating_sub(self.links.len());
        for (id, k) in self.known.iter_mut() {
            if budget == 0 {
                break;
            }
            if self.links.contains_key(id) || k.dialing || k.next_attempt > now {
                continue;
            }
            budget -= 1;
            k.dialing = true;
            k.next_attempt = now + k.backoff;
            self.outputs.push_back(Output::Dial {
                peer: *id,
                addr: k.addr.clone(),
            });
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether `peer` is connected, and by which connection.
    pub fn link(&self, peer: &NodeBytes) -> Option<u64> {
        self.links.get(peer).map(|l| l.conn_id)
    }

    /// Every peer this node knows or is connected to, each once, in ID order.
    pub fn all_peers(&self) -> Vec<NodeBytes> {
        let mut ids: Vec<NodeBytes> = self
            .known
            .keys()
            .chain(self.links.keys())
            .copied()
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Forgets every connection (the node is shutting down).
    pub fn clear_links(&mut self) {
        self.links.clear();
    }

    /// The known addresses of the connected peers (what a new connection is told).
    fn peer_addrs(&self) -> Vec<EndpointAddr> {
        self.links
            .keys()
            .filter_map(|p| self.known.get(p).map(|k| k.addr.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
