//! Networking: the iroh endpoint, connections, the peer table, peer exchange, and the driver of
//! the election state machine.
//!
//! One task (the *node task*, `Node::run`) owns the two protocol state machines of this layer:
//! [`Membership`](membership::Membership) (which connections to keep, whom to dial and when,
//! what peers tell each other) and [`Election`](crate::election::Election). Both are sans-IO:
//! the node task feeds them what happened with the time since start, and carries out their
//! outputs (dial, close, send, persist). Each connection runs in its own task ([`conn`]) and
//! reports to the node task through [`NodeEvent`]s.

pub(crate) mod auth;
pub(crate) mod conn;
pub(crate) mod membership;
pub(crate) mod ticket;
pub(crate) mod wire;

#[cfg(test)]
mod hostile_tests;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use iroh::{
    endpoint::{presets, Connection, PortmapperConfig, QuicTransportConfig, VarInt},
    Endpoint, EndpointAddr, SecretKey,
};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{debug, warn};

use self::{
    auth::SwarmKey,
    conn::close,
    membership::{Admit, Membership},
    wire::ControlMsg,
};
use crate::{
    clock::{Clocks, OffsetEstimator},
    doc::NodeBytes,
    election::{self, Election, Output},
    error::{Error, Result},
    events::Event,
    ids::node_id_string,
    replica::Command,
    RelayMode,
};

/// How often disconnected known peers are considered for a new dial.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);
/// Anti-entropy period: a sync round with every peer, re-requests of missing values.
const ANTI_ENTROPY: Duration = Duration::from_secs(1);
/// How often each peer's clock is measured (and once as soon as it connects).
const CLOCK_PING: Duration = Duration::from_secs(2);
/// Longest wait for a QUIC connection to be established. Short, because while a dial is in
/// flight that peer is not dialed again: after a partition heals, reconnection waits for it.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Networking options, resolved from the builder.
#[derive(Debug, Clone)]
pub(crate) struct NetConfig {
    pub swarm_key: SwarmKey,
    pub bind_addr: Option<SocketAddr>,
    pub relay_mode: RelayMode,
    pub local_discovery: bool,
    pub heartbeat_interval: Duration,
    pub leader_timeout: Duration,
    pub max_peers: usize,
    pub bootstrap: Vec<EndpointAddr>,
}

/// The leader as this node currently reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaderState {
    pub leader: Option<NodeBytes>,
    pub term: u64,
    pub is_me: bool,
}

/// How a peer is reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A direct UDP path (possibly after NAT traversal).
    Direct,
    /// Through a relay server.
    Relayed,
    /// Not connected.
    None,
}

/// What [`Swarm::peers`](crate::Swarm::peers) reports about one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    /// The peer's node ID.
    pub id: String,
    /// Whether an authenticated connection is open.
    pub connected: bool,
    /// How the connection runs.
    pub path: PathKind,
    /// Round-trip time of the connection's selected path.
    pub rtt: Option<Duration>,
    /// How far the peer's wall clock is ahead of this node's (negative: behind), in
    /// milliseconds, as measured over the connection (accurate to about half the round-trip
    /// time); None until measured, and for a disconnected peer.
    pub clock_offset_ms: Option<i64>,
}

/// Messages to the node task.
pub(crate) enum NodeEvent {
    /// A connection passed the handshake; `keep` answers None (keep) or a close code.
    Up {
        peer: NodeBytes,
        conn: Connection,
        conn_id: u64,
        dialer: bool,
        control: mpsc::Sender<ControlMsg>,
        data: crate::replica::DataTx,
        keep: oneshot::Sender<Option<VarInt>>,
    },
    /// A kept connection ended.
    Down { peer: NodeBytes, conn_id: u64 },
    /// A control message over a kept connection.
    Control {
        peer: NodeBytes,
        conn_id: u64,
        msg: ControlMsg,
    },
    /// A dial we started ended; `authenticated` says whether it got through the handshake.
    DialDone {
        peer: NodeBytes,
        authenticated: bool,
    },
    /// A peer to dial (bootstrap at runtime, local discovery).
    Discovered(EndpointAddr),
    /// Report the peer table.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Close every connection and the endpoint.
    Shutdown(oneshot::Sender<()>),
}

/// State shared by the node task and the connection tasks.
pub(crate) struct Shared {
    pub me: NodeBytes,
    pub swarm_key: SwarmKey,
    pub node_tx: mpsc::Sender<NodeEvent>,
    pub replica_tx: mpsc::Sender<Command>,
    conn_ids: AtomicU64,
    /// Set when the node starts shutting down: connections still completing their handshake
    /// are refused, so that no peer counts a connection to a node that is leaving.
    pub closing: AtomicBool,
}

impl Shared {
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Creates the endpoint.
pub(crate) async fn bind_endpoint(secret: [u8; 32], cfg: &NetConfig) -> Result<Endpoint> {
    let idle = (cfg.leader_timeout * 3).clamp(Duration::from_secs(3), Duration::from_secs(30));
    let idle = idle
        .try_into()
        .map_err(|_| Error::Config("leader_timeout too large".into()))?;
    let transport = QuicTransportConfig::builder()
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Duration::from_secs(1))
        .build();
    let mut b = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&secret))
        .alpns(vec![wire::ALPN.to_vec()])
        .transport_config(transport)
        .relay_mode(cfg.relay_mode.to_iroh()?);
    if matches!(cfg.relay_mode, RelayMode::Disabled) {
        // No relay means no internet is assumed: do not probe the router for port mappings.
        b = b.portmapper_config(PortmapperConfig::Disabled);
    }
    if let Some(addr) = cfg.bind_addr {
        b = b
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|e| Error::Config(format!("bind address {addr}: {e}")))?;
    }
    let ep = b
        .bind()
        .await
        .map_err(|e| Error::Network(format!("cannot bind endpoint: {e}")))?;
    Ok(ep)
}

/// Handles kept by the `Swarm`.
pub(crate) struct NetHandle {
    pub node_tx: mpsc::Sender<NodeEvent>,
    pub leader: watch::Receiver<LeaderState>,
    pub task: tokio::task::JoinHandle<()>,
}

/// What the election persisted (the `term` and `leader` meta rows of the store), handed back
/// on restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ElectionRecord {
    /// Highest term seen.
    pub term: u64,
    /// The leader this node last reported, and its term.
    pub leader: Option<(NodeBytes, u64)>,
}

impl ElectionRecord {
    /// The stored form of [`ElectionRecord::leader`]: 32 bytes of node ID, then the term as
    /// 8 bytes big-endian.
    pub fn encode_leader(leader: &(NodeBytes, u64)) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&leader.0);
        v.extend_from_slice(&leader.1.to_be_bytes());
        v
    }

    /// Reads what [`ElectionRecord::encode_leader`] wrote; None for anything else (the node
    /// then asks a leader whose term it has seen for a new one, which is safe).
    pub fn decode_leader(bytes: &[u8]) -> Option<(NodeBytes, u64)> {
        let (id, term) = bytes.split_first_chunk::<32>()?;
        let term: [u8; 8] = term.try_into().ok()?;
        Some((*id, u64::from_be_bytes(term)))
    }
}

/// Starts the node task (accepting, dialing, election).
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    endpoint: Endpoint,
    cfg: NetConfig,
    record: ElectionRecord,
    known: Vec<EndpointAddr>,
    replica_tx: mpsc::Sender<Command>,
    misbehaved: mpsc::UnboundedReceiver<(NodeBytes, String)>,
    events: broadcast::Sender<Event>,
    clocks: Arc<Clocks>,
) -> NetHandle {
    let me = *endpoint.id().as_bytes();
    let (node_tx, node_rx) = mpsc::channel(1024);
    let shared = Arc::new(Shared {
        me,
        swarm_key: cfg.swarm_key.clone(),
        node_tx: node_tx.clone(),
        replica_tx,
        conn_ids: AtomicU64::new(1),
        closing: AtomicBool::new(false),
    });
    let (leader_tx, leader_rx) = watch::channel(LeaderState::default());
    let start = Instant::now();
    let mut election = Election::new(
        me,
        record.term,
        election::Config {
            heartbeat_interval: cfg.heartbeat_interval,
            leader_timeout: cfg.leader_timeout,
        },
        Duration::ZERO,
    );
    if let Some((leader, term)) = record.leader {
        election = election.with_last_leader(leader, term);
    }
    // A node that knows other members (a restart, or bootstrap peers) gives its first dials the
    // time they may take before it would lead alone (see `Election::with_startup_grace`).
    if !known.is_empty() || !cfg.bootstrap.is_empty() {
        election = election.with_startup_grace(DIAL_TIMEOUT);
    }
    // `with_last_leader` may only raise the term (an inconsistent record), which the next
    // write persists; nothing else is queued yet.
    while election.poll_output().is_some() {}
    let max_peers = cfg.max_peers;
    let mut node = Node {
        endpoint: endpoint.clone(),
        shared: shared.clone(),
        cfg,
        start,
        election,
        persisted: record,
        membership: Membership::new(me, max_peers),
        peers: HashMap::new(),
        leader_tx,
        events,
        clocks,
        next_ping: 0,
    };
    for addr in known.into_iter().chain(node.cfg.bootstrap.clone()) {
        node.membership.learn(addr, Duration::ZERO);
    }
    // Accept loop: a separate task so a slow handshake never blocks the node task.
    tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
    if node.cfg.local_discovery {
        start_local_discovery(&endpoint, &node.cfg.swarm_key, node_tx.clone());
    }
    let task = tokio::spawn(node.run(node_rx, misbehaved));
    NetHandle {
        node_tx,
        leader: leader_rx,
        task,
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let accepting = match incoming.accept() {
                Ok(a) => a,
                Err(e) => return debug!("incoming refused: {e}"),
            };
            match accepting.await {
                Ok(conn) => {
                    conn::run(shared, conn, false).await;
                }
                Err(e) => debug!("incoming handshake failed: {e}"),
            }
        });
    }
}

fn start_local_discovery(endpoint: &Endpoint, key: &SwarmKey, node_tx: mpsc::Sender<NodeEvent>) {
    use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
    use n0_future::StreamExt;
    // The service name carries a tag of the swarm key so nodes of other swarms on the LAN are
    // not even dialed.
    let mdns = match MdnsAddressLookup::builder()
        .service_name(format!("murmur-{}", key.tag()))
        .build(endpoint.id())
    {
        Ok(m) => m,
        Err(e) => return warn!("local discovery unavailable: {e}"),
    };
    let lookup = match endpoint.address_lookup() {
        Ok(l) => l,
        Err(e) => return warn!("local discovery unavailable: {e}"),
    };
    let mdns2 = mdns.clone();
    lookup.add(mdns);
    tokio::spawn(async move {
        let mut events = mdns2.subscribe().await;
        while let Some(ev) = events.next().await {
            if let DiscoveryEvent::Discovered { endpoint_info, .. } = ev {
                let addr = endpoint_info.to_endpoint_addr();
                if node_tx.send(NodeEvent::Discovered(addr)).await.is_err() {
                    return;
                }
            }
        }
    });
}

struct PeerConn {
    conn: Connection,
    conn_id: u64,
    control: mpsc::Sender<ControlMsg>,
    /// The peer's clock offset, from the answers to our pings.
    clock: OffsetEstimator,
    /// The ping awaiting its answer: its id and when it was sent.
    ping: Option<(u64, Instant)>,
}

struct Node {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    cfg: NetConfig,
    start: Instant,
    election: Election<NodeBytes>,
    /// What was last handed to the replica to persist.
    persisted: ElectionRecord,
    /// Who is known, connected, due for a dial (the decisions: see [`membership`]).
    membership: Membership,
    /// The connection kept to each peer (as `membership` decided), with its I/O handles.
    peers: HashMap<NodeBytes, PeerConn>,
    leader_tx: watch::Sender<LeaderState>,
    events: broadcast::Sender<Event>,
    clocks: Arc<Clocks>,
    /// Id of the next clock ping.
    next_ping: u64,
}

impl Node {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<NodeEvent>,
        mut misbehaved: mpsc::UnboundedReceiver<(NodeBytes, String)>,
    ) {
        let mut reconnect = tokio::time::interval(RECONNECT_CHECK);
        let mut anti_entropy = tokio::time::interval(ANTI_ENTROPY);
        let mut clock_ping = tokio::time::interval(CLOCK_PING);
        clock_ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .election
                .next_deadline()
                .map(|d| self.start + d)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(NodeEvent::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(ev) => self.handle(ev).await,
                    None => return,
                },
                Some((peer, reason)) = misbehaved.recv() => {
                    if let Some(p) = self.peers.get(&peer) {
                        warn!(peer = %node_id_string(&peer), "closing connection: {reason}");
                        p.conn.close(close::PROTOCOL, reason.as_bytes());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.now();
                    self.election.tick(now);
                }
                _ = reconnect.tick() => {
                    let now = self.now();
                    self.membership.tick(now);
                }
                _ = anti_entropy.tick() => {
                    let _ = self.shared.replica_tx.try_send(Command::Tick);
                }
                _ = clock_ping.tick() => {
                    let peers: Vec<NodeBytes> = self.peers.keys().copied().collect();
                    for peer in peers {
                        self.ping(peer);
                    }
                }
            }
            self.drive_membership();
            self.drive_election().await;
        }
    }

    async fn handle(&mut self, ev: NodeEvent) {
        let now = self.now();
        match ev {
            NodeEvent::Up {
                peer,
                conn,
                conn_id,
                dialer,
                control,
                data,
                keep,
            } => {
                let replaced = match self.membership.up(peer, conn_id, dialer, now) {
                    Admit::Refuse(code) => {
                        debug!(peer = %node_id_string(&peer), conn_id, dialer, %code, "connection not kept");
                        let _ = keep.send(Some(code));
                        return;
                    }
                    Admit::Keep { replaced } => replaced,
                };
                debug!(peer = %node_id_string(&peer), conn_id, dialer, "connection kept");
                if let Some(old) = self.peers.insert(
                    peer,
                    PeerConn {
                        conn,
                        conn_id,
                        control,
                        clock: OffsetEstimator::default(),
                        ping: None,
                    },
                ) {
                    debug!(peer = %node_id_string(&peer), conn_id = old.conn_id, "connection replaced");
                    old.conn
                        .close(close::DUPLICATE, b"replaced by a newer connection");
                }
                // The replica must know the connection before the connection task forwards
                // its first message (both go through the replica's FIFO queue), or that
                // message would be dropped as coming from an unknown connection.
                let _ = self
                    .shared
                    .replica_tx
                    .send(Command::PeerUp {
                        peer,
                        conn_id,
                        tx: data,
                    })
                    .await;
                let _ = keep.send(None);
                self.ping(peer);
                if replaced.is_none() {
                    self.election.peer_up(peer, now);
                    let _ = self.events.send(Event::PeerUp {
                        peer: node_id_string(&peer),
                    });
                }
            }
            NodeEvent::Down { peer, conn_id } => {
                let current = self.membership.down(peer, conn_id, now);
                debug!(peer = %node_id_string(&peer), conn_id, current, "connection down");
                if current {
                    self.peers.remove(&peer);
                    self.clocks.remove_peer(&peer);
                    let _ = self
                        .shared
                        .replica_tx
                        .send(Command::PeerDown { peer, conn_id })
                        .await;
                    self.election.peer_down(&peer, now);
                    let _ = self.events.send(Event::PeerDown {
                        peer: node_id_string(&peer),
                    });
                }
            }
            NodeEvent::Control { peer, conn_id, msg } => {
                if self.membership.link(&peer) != Some(conn_id) {
                    return;
                }
                match msg {
                    ControlMsg::Peers { me, known } => {
                        self.membership.peers_received(peer, me, known, now);
                    }
                    ControlMsg::Election(m) => self.election.handle(peer, m, now),
                    ControlMsg::ClockPing { id, .. } => {
                        if let Some(p) = self.peers.get(&peer) {
                            let wall_ms = self.clocks.now_ms();
                            let _ = p.control.try_send(ControlMsg::ClockPong { id, wall_ms });
                        }
                    }
                    ControlMsg::ClockPong { id, wall_ms } => {
                        let my_wall = self.clocks.now_ms();
                        if let Some(p) = self.peers.get_mut(&peer) {
                            // Only the answer to the ping in flight counts (its round trip is
                            // known); others are late or made up.
                            if let Some((_, sent)) = p.ping.take_if(|(pid, _)| *pid == id) {
                                let rtt = sent.elapsed().as_millis().min(u128::from(u64::MAX));
                                p.clock.sample(wall_ms, my_wall, rtt as u64);
                                if let Some(o) = p.clock.offset_ms() {
                                    self.clocks.set_peer(peer, o);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            NodeEvent::DialDone {
                peer,
                authenticated,
            } => self.membership.dial_done(peer, authenticated, now),
            NodeEvent::Discovered(addr) => {
                self.membership.learn(addr, now);
            }
            NodeEvent::Peers(reply) => {
                let _ = reply.send(self.peer_infos());
            }
            NodeEvent::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Sends `peer` a clock ping (replacing any unanswered one).
    fn ping(&mut self, peer: NodeBytes) {
        let id = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        let wall_ms = self.clocks.now_ms();
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.control
                .try_send(ControlMsg::ClockPing { id, wall_ms })
                .is_ok()
            {
                p.ping = Some((id, Instant::now()));
            }
        }
    }

    /// Carries out what the membership state machine asks for.
    fn drive_membership(&mut self) {
        while let Some(out) = self.membership.poll_output() {
            match out {
                membership::Output::Dial { peer, addr } => self.dial(peer, addr),
                membership::Output::SendPeers { to, known } => {
                    if let Some(p) = self.peers.get(&to) {
                        let _ = p.control.try_send(ControlMsg::Peers {
                            me: self.endpoint.addr(),
                            known,
                        });
                    }
                }
                membership::Output::SaveAddr { peer, addr } => {
                    if let Ok(bytes) = postcard::to_stdvec(&addr) {
                        let _ = self
                            .shared
                            .replica_tx
                            .try_send(Command::SavePeerAddr { peer, addr: bytes });
                    }
                }
            }
        }
    }

    /// Dials `peer` in a task of its own; the outcome comes back as `NodeEvent::DialDone`
    /// (and the connection, if it gets through the handshake, as `NodeEvent::Up`).
    fn dial(&self, peer: NodeBytes, addr: EndpointAddr) {
        let (endpoint, shared) = (self.endpoint.clone(), self.shared.clone());
        tokio::spawn(async move {
            let authenticated = match tokio::time::timeout(
                DIAL_TIMEOUT,
                endpoint.connect(addr, wire::ALPN),
            )
            .await
            {
                Ok(Ok(conn)) => match conn::run(shared.clone(), conn, true).await {
                    conn::Outcome::Authenticated => true,
                    conn::Outcome::Failed(why) => {
                        warn!(peer = %node_id_string(&peer), "peer refused: {why}");
                        false
                    }
                },
                Ok(Err(e)) => {
                    debug!(peer = %node_id_string(&peer), "dial failed: {e}");
                    false
                }
                Err(_) => false,
            };
            let _ = shared
                .node_tx
                .send(NodeEvent::DialDone {
                    peer,
                    authenticated,
                })
                .await;
        });
    }

    /// Persists the election's current record (highest term, last reported leader) unless
    /// that was already done, and waits until it is durable: terms are fencing tokens, so they
    /// are on disk before any message or report that depends on them.
    ///
    /// The whole record is written at once: the first of a run of outputs that ask for it
    /// (`PersistTerm` then `PersistLeader`, typically) writes both, and the others find it
    /// done, so taking leadership costs one commit.
    async fn persist_record(&mut self) {
        let record = ElectionRecord {
            term: self.election.term(),
            leader: self.election.last_leader().map(|(l, t)| (*l, t)),
        };
        if record == self.persisted {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let cmd = Command::SetTerm {
            term: record.term,
            leader: record.leader.as_ref().map(ElectionRecord::encode_leader),
            reply: tx,
        };
        if self.shared.replica_tx.send(cmd).await.is_ok() {
            match rx.await {
                Ok(Ok(())) => self.persisted = record,
                // Not marked as written: the next output that asks for it tries again.
                Ok(Err(e)) => warn!("cannot persist term {}: {e}", record.term),
                Err(_) => {}
            }
        }
    }

    /// Carries out what the election state machine asks for.
    async fn drive_election(&mut self) {
        while let Some(out) = self.election.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    tracing::trace!(to = %node_id_string(&to), ?msg, "election message");
                    if let Some(p) = self.peers.get(&to) {
                        let _ = p.control.try_send(ControlMsg::Election(msg));
                    }
                }
                Output::PersistTerm(_) | Output::PersistLeader { .. } => {
                    self.persist_record().await;
                }
                Output::LeaderChanged { leader, term } => {
                    let state = LeaderState {
                        leader,
                        term,
                        is_me: leader == Some(self.shared.me),
                    };
                    let is_me = state.is_me;
                    let _ = self.leader_tx.send(state);
                    // The replica needs it for the epoch protocol (only a leader cuts).
                    let _ = self
                        .shared
                        .replica_tx
                        .send(Command::Leadership {
                            leading: is_me.then_some(term),
                            leader,
                        })
                        .await;
                    let _ = self.events.send(Event::LeaderChanged {
                        leader: leader.map(|l| node_id_string(&l)),
                        term,
                    });
                }
            }
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        self.membership
            .all_peers()
            .into_iter()
            .map(|id| match self.peers.get(&id) {
                Some(p) => {
                    let paths = p.conn.paths();
                    let sel = paths.iter().find(|p| p.is_selected());
                    PeerInfo {
                        id: node_id_string(&id),
                        connected: true,
                        path: match &sel {
                            Some(s) if s.is_relay() => PathKind::Relayed,
                            Some(_) => PathKind::Direct,
                            None => PathKind::None,
                        },
                        rtt: sel.map(|s| s.rtt()),
                        clock_offset_ms: p.clock.offset_ms(),
                    }
                }
                None => PeerInfo {
                    id: node_id_string(&id),
                    connected: false,
                    path: PathKind::None,
                    rtt: None,
                    clock_offset_ms: None,
                },
            })
            .collect()
    }

    async fn shutdown(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for p in self.peers.values() {
            p.conn.close(close::NORMAL, b"shutdown");
        }
        self.peers.clear();
        self.membership.clear_links();
        let _ = self.leader_tx.send(LeaderState::default());
        self.endpoint.close().await;
    }
}
