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

/// How many characters of a refused input an error repeats.
const ECHO_CHARS: usize = 80;

/// Parses a ticket, `<id>@<addr>[,<addr>]` or a bare node ID. A ticket must decode to exactly
/// one address: trailing bytes (a ticket with something appended, or garbage) are refused.
pub(crate) fn parse(input: &str) -> Result<EndpointAddr> {
    let bad = |reason: &str| Error::InvalidTicket {
        input: match input.char_indices().nth(ECHO_CHARS) {
            Some((end, _)) => format!("{}… ({} bytes)", &input[..end], input.len()),
            None => input.to_string(),
        },
        reason: reason.to_string(),
    };
    let s = input.trim();
    if let Some(rest) = s.strip_prefix(PREFIX) {
        let bytes = b32()
            .decode(rest.as_bytes())
            .map_err(|_| bad("not valid base32 after the `murmur` prefix"))?;
        let (addr, extra) = postcard::take_from_bytes::<EndpointAddr>(&bytes)
            .map_err(|_| bad("does not decode as an address"))?;
        if !extra.is_empty() {
            return Err(bad(&format!(
                "{} bytes follow the address (a ticket encodes exactly one address; was it cut or pasted twice?)",
                extra.len()
            )));
        }
        return Ok(addr);
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

    /// `murmur` + 100 000 × `a` decodes to zeros: an all-zero node ID followed by 62 kB that
    /// were once ignored. Anything after the address, or a ticket cut short, is refused, and
    /// the error does not repeat a huge input in full.
    #[test]
    fn trailing_bytes_and_wrong_lengths_are_refused() {
        let long = format!("murmur{}", "a".repeat(100_000));
        let e = parse(&long).expect_err("a ticket with trailing bytes");
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidTicket { .. }), "{msg}");
        assert!(msg.contains("bytes follow the address"), "{msg}");
        assert!(msg.len() < 500, "the error repeats {} bytes", msg.len());

        let id = iroh::SecretKey::from_bytes(&[7; 32]).public();
        let addr = EndpointAddr::new(id).with_ip_addr("127.0.0.1:4242".parse().unwrap());
        let mut bytes = postcard::to_stdvec(&addr).unwrap();
        bytes.push(0);
        let appended = format!("{PREFIX}{}", b32().encode(&bytes));
        assert!(
            matches!(parse(&appended), Err(Error::InvalidTicket { .. })),
            "one trailing byte accepted"
        );
        let t = encode(&addr);
        let twice = format!("{t}{}", &t[PREFIX.len()..]);
        assert!(parse(&twice).is_err(), "a ticket pasted twice accepted");
        for cut in [t.len() - 8, t.len() - 16, PREFIX.len() + 8] {
            assert!(parse(&t[..cut]).is_err(), "ticket cut to {cut} accepted");
        }
        assert_eq!(parse(&t).unwrap(), addr);
    }
}
