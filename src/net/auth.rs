//! Swarm-key authentication, the first thing on every connection.
//!
//! QUIC/TLS already proves each side's endpoint ID (its public key). What remains is to prove
//! that both hold the swarm key, without revealing it, bound to this very connection so a proof
//! cannot be replayed or relayed:
//!
//! ```text
//! dialer   → Hello     { version, nonce_d }
//! acceptor → Challenge { nonce_a, proof_a = HMAC(key, "acceptor" | ids | nonces | ekm) }
//! dialer   → Proof     { proof_d = HMAC(key, "dialer"   | ids | nonces | ekm) }
//! acceptor → Welcome
//! ```
//!
//! `ids` are the dialer's then the acceptor's endpoint IDs, `ekm` is keying material exported
//! from the connection's TLS session (RFC 5705). Each side checks the other's proof before
//! sending anything else; a wrong proof closes the connection.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The 32-byte secret shared by the members of a swarm.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey(pub(crate) [u8; 32]);

impl SwarmKey {
    /// A key from 32 secret bytes (a closed swarm: share the bytes with members only).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SwarmKey(bytes)
    }

    /// A key derived from a name (an open swarm: anyone who knows the name can join).
    pub fn from_name(name: &str) -> Self {
        SwarmKey(blake3::derive_key("murmur swarm name v1", name.as_bytes()))
    }

    /// A short public tag of the key, used to advertise the swarm on the LAN (mDNS) without
    /// revealing the key.
    pub(crate) fn tag(&self) -> String {
        let h = blake3::keyed_hash(&self.0, b"murmur mdns tag v1");
        data_encoding::HEXLOWER.encode(&h.as_bytes()[..6])
    }
}

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwarmKey(<secret>)")
    }
}

/// Label for the TLS keying-material export.
pub(crate) const EKM_LABEL: &[u8] = b"murmur/1 auth";

/// Which side of the handshake a proof is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Dialer,
    Acceptor,
}

/// Everything a proof is bound to: both endpoint IDs, both nonces, the TLS session.
pub(crate) struct Transcript {
    pub dialer: [u8; 32],
    pub acceptor: [u8; 32],
    pub nonce_d: [u8; 32],
    pub nonce_a: [u8; 32],
    pub ekm: [u8; 32],
}

impl Transcript {
    /// The proof `role` sends.
    pub fn proof(&self, key: &SwarmKey, role: Role) -> [u8; 32] {
        self.mac(key, role).finalize().into_bytes().into()
    }

    /// Checks, in constant time, the proof received from `role`.
    pub fn verify(&self, key: &SwarmKey, role: Role, proof: &[u8; 32]) -> bool {
        self.mac(key, role).verify_slice(proof).is_ok()
    }

    fn mac(&self, key: &SwarmKey, role: Role) -> Hmac<Sha256> {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("hmac takes any key size");
        mac.update(match role {
            Role::Dialer => b"murmur/1 dialer  ",
            Role::Acceptor => b"murmur/1 acceptor",
        });
        for part in [
            &self.dialer,
            &self.acceptor,
            &self.nonce_d,
            &self.nonce_a,
            &self.ekm,
        ] {
            mac.update(part);
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_key_role_ids_nonces_and_session() {
        let k = SwarmKey::from_name("team");
        let t = |d, a, nd, na, ekm| Transcript {
            dialer: [d; 32],
            acceptor: [a; 32],
            nonce_d: [nd; 32],
            nonce_a: [na; 32],
            ekm: [ekm; 32],
        };
        let base = t(1, 2, 3, 4, 5);
        let p = base.proof(&k, Role::Dialer);
        assert!(base.verify(&k, Role::Dialer, &p));
        // Anything different fails.
        assert!(!base.verify(&SwarmKey::from_name("other"), Role::Dialer, &p));
        assert!(!base.verify(&k, Role::Acceptor, &p));
        assert!(!t(2, 1, 3, 4, 5).verify(&k, Role::Dialer, &p));
        assert!(!t(1, 2, 4, 3, 5).verify(&k, Role::Dialer, &p));
        assert!(!t(1, 2, 3, 4, 6).verify(&k, Role::Dialer, &p));
    }

    #[test]
    fn name_derived_keys_differ_by_name_and_tag_hides_key() {
        assert_ne!(SwarmKey::from_name("a").0, SwarmKey::from_name("b").0);
        assert_eq!(SwarmKey::from_name("a").0, SwarmKey::from_name("a").0);
        let t = SwarmKey::from_name("a").tag();
        assert_eq!(t.len(), 12);
        assert!(!data_encoding::HEXLOWER
            .encode(&SwarmKey::from_name("a").0)
            .contains(&t));
    }
}
