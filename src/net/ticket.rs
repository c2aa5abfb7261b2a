//! Tickets: how a node tells others where to find it.
//!
//! A ticket is `murmur` followed by the lowercase base32 of the postcard encoding of an iroh
//! `EndpointAddr` (node ID, IP addresses, relay URL). Bootstrap also accepts
//! `<node-id>@<ip>:<port>[,<ip>:<port>...]`, or a bare node ID (found through local discovery).

use std::net::SocketAddr;

use iroh::{EndpointAddr, PublicKey};

use crate::error::{Error, Result};

const PREFIX: &str = "murmur";

fn b32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding()
        .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
}

/// Encodes an address as a ticket.
pub(crate) fn encode(addr: &EndpointAddr) -> String {
    let bytes = postcard::to_stdvec(addr).unwrap_or_default();
    format!("{PREFIX}{}", b32().encode(&bytes))
}

/// Parses a ticket, `<id>@<addr>[,<addr>]` or a bare node ID.
pub(crate) fn parse(input: &str) -> Result<EndpointAddr> {
    let bad = |reason: &str| Error::InvalidTicket {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    if let Some(rest) = s.strip_prefix(PREFIX) {
        let bytes = b32()
            .decode(rest.as_bytes())
            .map_err(|_| bad("not valid base32 after the `murmur` prefix"))?;
        return postcard::from_bytes(&bytes).map_err(|_| bad("does not decode as an address"));
    }
    let (id, addrs) = match s.split_once('@') {
        Some((id, addrs)) => (id, Some(addrs)),
        None => (s, None),
    };
    let id: PublicKey = id
        .parse()
        .map_err(|_| bad("the node ID is not a valid public key (64 hex characters)"))?;
    let mut addr = EndpointAddr::new(id);
    if let Some(addrs) = addrs {
        for a in addrs.split(',') {
            let sock: SocketAddr = a
                .trim()
                .parse()
                .map_err(|_| bad("an address is not of the form <ip>:<port>"))?;
            addr = addr.with_ip_addr(sock);
        }
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_roundtrip_and_garbage_is_refused() {
        let id = iroh::SecretKey::from_bytes(&[7; 32]).public();
        let addr = EndpointAddr::new(id).with_ip_addr("127.0.0.1:4242".parse().unwrap());
        let t = encode(&addr);
        assert!(t.starts_with("murmur"));
        assert_eq!(parse(&t).unwrap(), addr);
        assert_eq!(parse(&format!("{id}@127.0.0.1:4242")).unwrap(), addr);
        assert_eq!(parse(&id.to_string()).unwrap(), EndpointAddr::new(id));
        for bad in [
            "",
            "murmur!!",
            "murmuraaaa",
            "zz@1.2.3.4:5",
            &format!("{id}@nonsense"),
        ] {
            assert!(
                matches!(parse(bad), Err(Error::InvalidTicket { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
