//! One connection to a peer: handshake, then two streams pumped in both directions.
//!
//! Each connection carries two bidirectional streams, both opened by the dialer:
//! - **control** (higher send priority): the handshake, then peer exchange and election
//!   messages, so heartbeats are not stuck behind a large transfer;
//! - **data**: replication ([`DataMsg`]), forwarded to the replica thread. The replica's
//!   bounded command queue is the back-pressure: when it is busy, this task stops reading and
//!   QUIC flow control slows the sender.
//!
//! The task registers the connection with the node task after authentication and only starts
//! reading once the node has decided to keep it (a pair of nodes dialing each other at once
//! ends up with two connections, of which one is kept).

use std::{sync::Arc, time::Duration};

use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::{
    auth::{Role, Transcript, EKM_LABEL},
    wire::{
        read_frame, read_frame_sized, write_frame, ControlMsg, MAX_CONTROL_FRAME, MAX_DATA_FRAME,
        MAX_INFLIGHT_BYTES, PROTOCOL_VERSION,
    },
    NodeEvent, Shared,
};
use crate::{
    doc::NodeBytes,
    replica::{Command, DataTx, Outflow},
    sync::DataMsg,
};

/// How long the handshake may take.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// First byte written on the data stream, so the acceptor can tell it apart.
const DATA_STREAM_TAG: u8 = 0xD1;

/// QUIC application close codes.
pub(crate) mod close {
    use iroh::endpoint::VarInt;
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    pub const AUTH_FAILED: VarInt = VarInt::from_u32(1);
    pub const PROTOCOL: VarInt = VarInt::from_u32(2);
    pub const DUPLICATE: VarInt = VarInt::from_u32(3);
    pub const TOO_MANY_PEERS: VarInt = VarInt::from_u32(4);
}

/// How a connection attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It was authenticated (it may have run and ended since).
    Authenticated,
    /// It failed before authentication completed.
    Failed(String),
}

/// Runs a connection until it ends.
pub(crate) async fn run(shared: Arc<Shared>, conn: Connection, dialer: bool) -> Outcome {
    let peer: NodeBytes = *conn.remote_id().as_bytes();
    let streams =
        tokio::time::timeout(AUTH_TIMEOUT, handshake(&shared, &conn, dialer, &peer)).await;
    let (cs, cr, ds, dr) = match streams {
        Ok(Ok(s)) => s,
        Ok(Err((code, reason))) => {
            debug!(peer = %hex(&peer), "handshake failed: {reason}");
            conn.close(code, reason.as_bytes());
            return Outcome::Failed(reason);
        }
        Err(_) => {
            conn.close(close::AUTH_FAILED, b"handshake timeout");
            return Outcome::Failed("handshake timed out".into());
        }
    };

    let conn_id = shared.next_conn_id();
    let (ctl_tx, ctl_rx) = mpsc::channel::<ControlMsg>(256);
    let (data_tx, data_rx, flow) = DataTx::channel(1024);
    let (keep_tx, keep_rx) = oneshot::channel();
    let up = NodeEvent::Up {
        peer,
        conn: conn.clone(),
        conn_id,
        dialer,
        control: ctl_tx,
        data: data_tx,
        keep: keep_tx,
    };
    if shared.node_tx.send(up).await.is_err() {
        conn.close(close::NORMAL, b"shutting down");
        return Outcome::Authenticated;
    }
    match keep_rx.await {
        Ok(None) => {}
        Ok(Some(code)) => {
            conn.close(code, b"not kept");
            return Outcome::Authenticated;
        }
        Err(_) => {
            conn.close(close::NORMAL, b"shutting down");
            return Outcome::Authenticated;
        }
    }

    tokio::spawn(pump(cs, ctl_rx, conn.clone()));
    tokio::spawn(pump_data(
        ds,
        data_rx,
        conn.clone(),
        flow,
        shared.replica_tx.clone(),
        (peer, conn_id),
    ));
    let reason = tokio::select! {
        r = read_control(&shared, cr, peer, conn_id) => r,
        r = read_data(&shared, dr, peer, conn_id) => r,
        e = conn.closed() => Ok(format!("closed: {e}")),
    };
    match reason {
        Ok(why) => debug!(peer = %hex(&peer), "connection ended: {why}"),
        Err(why) => {
            debug!(peer = %hex(&peer), "protocol error, closing: {why}");
            conn.close(close::PROTOCOL, why.as_bytes());
        }
    }
    let _ = shared.node_tx.send(NodeEvent::Down { peer, conn_id }).await;
    Outcome::Authenticated
}

type Streams = (SendStream, RecvStream, SendStream, RecvStream);

pub(crate) async fn handshake(
    shared: &Shared,
    conn: &Connection,
    dialer: bool,
    peer: &NodeBytes,
) -> Result<Streams, (VarInt, String)> {
    let proto = |e: String| (close::PROTOCOL, e);
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EKM_LABEL, b"")
        .map_err(|_| proto("cannot export keying material".into()))?;
    let me = shared.me;
    let (mut cs, mut cr) = if dialer {
        conn.open_bi().await.map_err(|e| proto(e.to_string()))?
    } else {
        conn.accept_bi().await.map_err(|e| proto(e.to_string()))?
    };
    let _ = cs.set_priority(10);
    let key = &shared.swarm_key;
    let fail = |r: &str| (close::AUTH_FAILED, r.to_string());
    if dialer {
        let nonce_d: [u8; 32] = rand::random();
        send(
            &mut cs,
            &ControlMsg::Hello {
                version: PROTOCOL_VERSION,
                nonce: nonce_d,
            },
        )
        .await?;
        let ControlMsg::Challenge {
            nonce: nonce_a,
            proof,
        } = recv(&mut cr).await?
        else {
            return Err(proto("expected Challenge".into()));
        };
        let t = Transcript {
            dialer: me,
            acceptor: *peer,
            nonce_d,
            nonce_a,
            ekm,
        };
        if !t.verify(key, Role::Acceptor, &proof) {
            return Err(fail("peer does not hold the swarm key"));
        }
        // A node that began shutting down completes no connection, in either role (see the
        // acceptor's check below).
        if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err((close::NORMAL, "shutting down".into()));
        }
        send(
            &mut cs,
            &ControlMsg::Proof {
                proof: t.proof(key, Role::Dialer),
            },
        )
        .await?;
        let ControlMsg::Welcome = recv(&mut cr).await? else {
            return Err(fail("peer refused our proof"));
        };
        let (mut ds, dr) = conn.open_bi().await.map_err(|e| proto(e.to_string()))?;
        ds.write_all(&[DATA_STREAM_TAG])
            .await
            .map_err(|e| proto(e.to_string()))?;
        Ok((cs, cr, ds, dr))
    } else {
        let ControlMsg::Hello {
            version,
            nonce: nonce_d,
        } = recv(&mut cr).await?
        else {
            return Err(proto("expected Hello".into()));
        };
        if version != PROTOCOL_VERSION {
            return Err(proto(format!("unsupported protocol version {version}")));
        }
        let nonce_a: [u8; 32] = rand::random();
        let t = Transcript {
            dialer: *peer,
            acceptor: me,
            nonce_d,
            nonce_a,
            ekm,
        };
        send(
            &mut cs,
            &ControlMsg::Challenge {
                nonce: nonce_a,
                proof: t.proof(key, Role::Acceptor),
            },
        )
        .await?;
        let ControlMsg::Proof { proof } = recv(&mut cr).await? else {
            return Err(proto("expected Proof".into()));
        };
        if !t.verify(key, Role::Dialer, &proof) {
            return Err(fail("peer does not hold the swarm key"));
        }
        // A node that is shutting down does not welcome anyone: the dialer would count a
        // connection (a peer up, then down at once) to a node that is leaving.
        if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err((close::NORMAL, "shutting down".into()));
        }
        send(&mut cs, &ControlMsg::Welcome).await?;
        let (ds, mut dr) = conn.accept_bi().await.map_err(|e| proto(e.to_string()))?;
        let mut tag = [0u8; 1];
        dr.read_exact(&mut tag)
            .await
            .map_err(|e| proto(e.to_string()))?;
        if tag[0] != DATA_STREAM_TAG {
            return Err(proto("unexpected stream".into()));
        }
        Ok((cs, cr, ds, dr))
    }
}

async fn send(s: &mut SendStream, m: &ControlMsg) -> Result<(), (VarInt, String)> {
    write_frame(s, m)
        .await
        .map_err(|e| (close::PROTOCOL, e.to_string()))
}

async fn recv(r: &mut RecvStream) -> Result<ControlMsg, (VarInt, String)> {
    read_frame(r, MAX_CONTROL_FRAME)
        .await
        .map_err(|e| (close::PROTOCOL, e.to_string()))
}

/// Writes queued messages to a stream until the queue closes or the stream fails.
async fn pump<T: serde::Serialize>(mut s: SendStream, mut rx: mpsc::Receiver<T>, conn: Connection) {
    while let Some(m) = rx.recv().await {
        if write_frame(&mut s, &m).await.is_err() {
            return;
        }
    }
    // The sender side was dropped on purpose (the replica gave up on this peer).
    conn.close(close::PROTOCOL, b"send queue closed");
}

/// [`pump`] for the data stream, which also tells the replica when it has written out most of
/// the values queued (see `replica::outflow`), so that the replica reads more.
async fn pump_data(
    mut s: SendStream,
    mut rx: mpsc::Receiver<DataMsg>,
    conn: Connection,
    flow: Arc<Outflow>,
    replica: mpsc::Sender<Command>,
    (peer, conn_id): (NodeBytes, u64),
) {
    while let Some(m) = rx.recv().await {
        if write_frame(&mut s, &m).await.is_err() {
            return;
        }
        if flow.written(&m)
            && replica
                .send(Command::Drained { peer, conn_id })
                .await
                .is_err()
        {
            return;
        }
    }
    conn.close(close::PROTOCOL, b"send queue closed");
}

async fn read_control(
    shared: &Shared,
    mut r: RecvStream,
    peer: NodeBytes,
    conn_id: u64,
) -> Result<String, String> {
    loop {
        let msg: ControlMsg = match read_frame(&mut r, MAX_CONTROL_FRAME).await {
            Ok(m) => m,
            Err(super::wire::FrameError::Closed) => return Ok("control stream closed".into()),
            Err(e) => return Err(e.to_string()),
        };
        match msg {
            ControlMsg::Peers { .. }
            | ControlMsg::Election(_)
            | ControlMsg::ClockPing { .. }
            | ControlMsg::ClockPong { .. } => {
                let ev = NodeEvent::Control { peer, conn_id, msg };
                if shared.node_tx.send(ev).await.is_err() {
                    return Ok("node stopped".into());
                }
            }
            other => return Err(format!("unexpected {other:?} after handshake")),
        }
    }
}

async fn read_data(
    shared: &Shared,
    mut r: RecvStream,
    peer: NodeBytes,
    conn_id: u64,
) -> Result<String, String> {
    let budget = Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES));
    loop {
        let (msg, size): (DataMsg, usize) = match read_frame_sized(&mut r, MAX_DATA_FRAME).await {
            Ok(m) => m,
            Err(super::wire::FrameError::Closed) => return Ok("data stream closed".into()),
            Err(e) => return Err(e.to_string()),
        };
        // Held until the replica has processed the message (see MAX_INFLIGHT_BYTES).
        let permit = budget
            .clone()
            .acquire_many_owned(size.max(1) as u32)
            .await
            .map_err(|_| "budget closed".to_string())?;
        let cmd = Command::FromPeer {
            peer,
            conn_id,
            msg,
            _permit: permit,
        };
        if shared.replica_tx.send(cmd).await.is_err() {
            return Ok("replica stopped".into());
        }
    }
}

fn hex(b: &NodeBytes) -> String {
    data_encoding::HEXLOWER.encode(&b[..5])
}
