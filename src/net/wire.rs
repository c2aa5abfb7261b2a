//! Framing and the control-stream messages.
//!
//! Every message is a frame: a 4-byte big-endian length, then that many bytes of postcard.
//! Each stream has a hard limit on frame size; a frame over the limit, or one that does not
//! decode, ends the connection (and nothing else).

use iroh::EndpointAddr;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::election;

/// ALPN of the Murmur protocol.
pub const ALPN: &[u8] = b"murmur/1";

/// Protocol version carried in the handshake. 2: the document spreads keys over bucket maps
/// (see `crate::doc`), which version 1 peers cannot read. 3: clock pings on the control stream
/// ([`ControlMsg::ClockPing`]), which a version 2 peer would take for a malformed message; it
/// now refuses the handshake instead, with a message that names the version.
pub(crate) const PROTOCOL_VERSION: u32 = 3;

/// Largest frame on the control stream (handshake, peer lists, election).
pub(crate) const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Largest frame on the data stream (changes with their values, sync parts).
pub(crate) const MAX_DATA_FRAME: usize = 16 << 20;
/// Most bytes of one peer's data messages read but not yet processed by the replica. Reading
/// stops at this bound, and QUIC flow control then slows the peer down: memory per peer stays
/// bounded however fast it sends.
pub(crate) const MAX_INFLIGHT_BYTES: usize = 2 * MAX_DATA_FRAME;

/// Messages on the control stream. The first four make up the handshake
/// ([`super::auth`]); nothing else is accepted before it completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ControlMsg {
    /// Dialer → acceptor: protocol version and a fresh nonce.
    Hello { version: u32, nonce: [u8; 32] },
    /// Acceptor → dialer: its nonce and its proof of holding the swarm key.
    Challenge { nonce: [u8; 32], proof: [u8; 32] },
    /// Dialer → acceptor: the dialer's proof.
    Proof { proof: [u8; 32] },
    /// Acceptor → dialer: authentication succeeded.
    Welcome,
    /// The sender's own addresses and the peers it is connected to (peer exchange).
    Peers {
        me: EndpointAddr,
        known: Vec<EndpointAddr>,
    },
    /// Leader election.
    Election(election::Message),
    /// Clock measurement (see [`crate::clock`]): the sender's wall time in milliseconds since
    /// the Unix epoch, and an id the answer echoes.
    ClockPing { id: u64, wall_ms: u64 },
    /// The answer to a [`ControlMsg::ClockPing`]: its id, and the answerer's wall time when it
    /// answered.
    ClockPong { id: u64, wall_ms: u64 },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("stream closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("i/o: {0}")]
    Io(String),
}

/// Encodes a message as a frame.
pub(crate) fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // postcard cannot fail on our own types (no maps with non-string keys, no unsized data).
    let body = postcard::to_stdvec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a frame body.
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Writes one frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode_frame(msg))
        .await
        .map_err(|e| FrameError::Io(e.to_string()))
}

/// Reads one frame of at most `max` bytes. `Err(Closed)` at a clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    read_frame_sized(r, max).await.map(|(m, _)| m)
}

/// Like [`read_frame`], also returning the frame's size in bytes.
pub(crate) async fn read_frame_sized<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<(T, usize), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len, max));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok((decode_body(&body)?, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::DataMsg;

    #[tokio::test]
    async fn frames_roundtrip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let msg = DataMsg::Want {
            hashes: vec![[7; 16]],
        };
        write_frame(&mut a, &msg).await.unwrap();
        let got: DataMsg = read_frame(&mut b, 1024).await.unwrap();
        assert_eq!(got, msg);

        // Oversized: refused before reading the body.
        a.write_all(&(2048u32).to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, DataMsg>(&mut b, 1024).await,
            Err(FrameError::TooLarge(2048, 1024))
        ));
    }

    #[tokio::test]
    async fn garbage_and_unknown_variants_are_malformed() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        // Variant index 200 does not exist.
        a.write_all(&[0, 0, 0, 2, 200, 1]).await.unwrap();
        assert!(matches!(
            read_frame::<_, ControlMsg>(&mut b, 1024).await,
            Err(FrameError::Malformed(_))
        ));
        drop(a);
        assert!(matches!(
            read_frame::<_, ControlMsg>(&mut b, 1024).await,
            Err(FrameError::Closed)
        ));
    }
}
