//! The membership rules, deterministically: every order in which two crossing connections can
//! come up, replacement after a restart, the peer bound, backoff, and peer exchange.

use std::{net::SocketAddr, time::Duration};

use iroh::{EndpointAddr, SecretKey};

use super::*;

const MS: Duration = Duration::from_millis(1);

/// `n` node addresses on 127.0.0.1, sorted by ID (the greatest ID wins a tie).
fn addrs(n: usize) -> Vec<EndpointAddr> {
    let mut v: Vec<EndpointAddr> = (0..n)
        .map(|i| {
            let port = 7000 + i as u16;
            EndpointAddr::new(SecretKey::generate().public())
                .with_ip_addr(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect();
    v.sort_by_key(|a| *a.id.as_bytes());
    v
}

fn id(a: &EndpointAddr) -> NodeBytes {
    *a.id.as_bytes()
}

fn drain(m: &mut Membership) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

/// Two nodes dial each other at once: connection `x` dialed by the lower node, `y` by the
/// greater. Whatever order the two come up in on either side (and whether the loser's end is
/// reported before or after), both sides keep `y`, and each closes or refuses `x`.
#[test]
fn crossing_dials_keep_the_same_connection_on_both_sides_in_every_order() {
    let a = addrs(2);
    let (low, high) = (id(&a[0]), id(&a[1]));
    // Connection ids as each side numbers them: x and y.
    let (x_on_low, y_on_low, x_on_high, y_on_high) = (1, 2, 11, 12);
    for low_first_x in [true, false] {
        for high_first_x in [true, false] {
            let mut l = Membership::new(low, 8);
            let mut h = Membership::new(high, 8);
            // On `low`: x was dialed by it, y by the peer.
            let on_low = [(x_on_low, true), (y_on_low, false)];
            let on_high = [(x_on_high, false), (y_on_high, true)];
            for (m, peer, events, first_x, keep) in [
                (&mut l, high, on_low, low_first_x, y_on_low),
                (&mut h, low, on_high, high_first_x, y_on_high),
            ] {
                let order = if first_x {
                    [events[0], events[1]]
                } else {
                    [events[1], events[0]]
                };
                let mut closed = Vec::new();
                for (conn, dialer) in order {
                    match m.up(peer, conn, dialer, Duration::ZERO) {
                        Admit::Keep { replaced } => closed.extend(replaced),
                        Admit::Refuse(code) => {
                            assert_eq!(code, close::DUPLICATE);
                            closed.push(conn);
                        }
                    }
                }
                assert_eq!(m.link(&peer), Some(keep), "order x-first={first_x}");
                assert_eq!(closed.len(), 1, "exactly one of the two is closed");
                assert_ne!(closed[0], keep);
                // The closed one's end changes nothing.
                assert!(!m.down(peer, closed[0], Duration::ZERO));
                assert_eq!(m.link(&peer), Some(keep));
            }
        }
    }
}

/// A peer that restarted dials again: its new connection replaces the old one (which the
/// driver closes), whose end is then ignored. A new peer is reported as such (`replaced: None`).
#[test]
fn a_new_connection_from_the_same_dialer_replaces_the_old_one() {
    let a = addrs(2);
    let (me, peer) = (id(&a[0]), id(&a[1]));
    let mut m = Membership::new(me, 8);
    assert_eq!(
        m.up(peer, 1, false, Duration::ZERO),
        Admit::Keep { replaced: None }
    );
    drain(&mut m);
    assert_eq!(m.up(peer, 2, false, MS), Admit::Keep { replaced: Some(1) });
    assert!(
        !m.down(peer, 1, MS),
        "the replaced connection's end is not the peer's"
    );
    assert_eq!(m.link(&peer), Some(2));
    assert!(m.down(peer, 2, MS));
    assert_eq!(m.link(&peer), None);
    assert!(!m.down(peer, 2, MS), "reported once");
}

#[test]
fn a_node_never_keeps_a_connection_to_itself() {
    let a = addrs(1);
    let mut m = Membership::new(id(&a[0]), 8);
    assert_eq!(
        m.up(id(&a[0]), 1, true, Duration::ZERO),
        Admit::Refuse(close::PROTOCOL)
    );
    assert!(!m.learn(a[0].clone(), Duration::ZERO));
    m.tick(Duration::ZERO);
    assert!(drain(&mut m).is_empty());
}

/// At most `max_peers` connections: one more new peer is refused, and dials stop at the bound.
#[test]
fn the_peer_bound_refuses_new_peers_and_limits_dials() {
    let a = addrs(5);
    let mut m = Membership::new(id(&a[0]), 2);
    for x in &a[1..] {
        m.learn(x.clone(), Duration::ZERO);
    }
    m.tick(Duration::ZERO);
    let dials = drain(&mut m)
        .into_iter()
        .filter(|o| matches!(o, Output::Dial { .. }))
        .count();
    assert_eq!(dials, 2);
    assert!(matches!(m.up(id(&a[1]), 1, true, MS), Admit::Keep { .. }));
    assert!(matches!(m.up(id(&a[2]), 2, false, MS), Admit::Keep { .. }));
    assert_eq!(
        m.up(id(&a[3]), 3, false, MS),
        Admit::Refuse(close::TOO_MANY_PEERS)
    );
    // A connected peer's replacement is not a new peer: still admitted.
    assert!(matches!(m.up(id(&a[2]), 4, false, MS), Admit::Keep { .. }));
    for p in &a[1..] {
        m.dial_done(id(p), false, MS);
    }
    drain(&mut m);
    m.tick(Duration::from_secs(10));
    assert!(drain(&mut m).is_empty(), "no dial beyond the bound");
}

/// A peer is dialed when learned, not again while the dial is in flight, then with a backoff
/// that doubles after each failed dial up to 2 s; a connection resets it, and a lost one makes
/// the peer due 250 ms later.
#[test]
fn redial_backs_off_and_resets() {
    let a = addrs(2);
    let peer = id(&a[1]);
    let mut m = Membership::new(id(&a[0]), 8);
    let dialed = |m: &mut Membership, now: Duration| {
        m.tick(now);
        drain(m)
            .iter()
            .any(|o| matches!(o, Output::Dial { peer: p, .. } if *p == peer))
    };
    assert!(m.learn(a[1].clone(), Duration::ZERO));
    assert!(dialed(&mut m, Duration::ZERO), "dialed at once");
    assert!(
        !dialed(&mut m, Duration::from_secs(60)),
        "one dial in flight"
    );
    // Failed dials: waits of 250, 500, 1000, 2000, 2000 ms.
    let mut now = Duration::from_secs(60);
    for wait in [250, 500, 1000, 2000, 2000] {
        m.dial_done(peer, false, now);
        assert!(
            !dialed(&mut m, now + (wait - 1) * MS),
            "not before {wait} ms"
        );
        now += wait * MS;
        assert!(dialed(&mut m, now), "after {wait} ms");
    }
    // It got through: connected, so not dialed; the backoff is back at its minimum.
    m.dial_done(peer, true, now);
    assert!(matches!(
        m.up(peer, 1, true, now),
        Admit::Keep { replaced: None }
    ));
    assert!(!dialed(&mut m, now + Duration::from_secs(60)));
    now += Duration::from_secs(60);
    assert!(m.down(peer, 1, now));
    assert!(!dialed(&mut m, now + 249 * MS));
    assert!(dialed(&mut m, now + 250 * MS));
    m.dial_done(peer, false, now + 250 * MS);
    assert!(
        !dialed(&mut m, now + 499 * MS),
        "backoff restarted at 250 ms"
    );
    assert!(dialed(&mut m, now + 500 * MS));
}

/// A new connection is told every connected peer's address. A peer that tells its own
/// address has it saved, and is introduced to the other connected peers when it is news,
/// once; addresses it passes on are learned (at most 4 × max_peers of them).
#[test]
fn peer_exchange_saves_introduces_and_learns() {
    let a = addrs(4);
    let (me, b, c) = (id(&a[0]), id(&a[1]), id(&a[2]));
    let mut m = Membership::new(me, 8);
    m.learn(a[1].clone(), Duration::ZERO);
    assert!(matches!(
        m.up(b, 1, true, Duration::ZERO),
        Admit::Keep { .. }
    ));
    assert!(drain(&mut m).contains(&Output::SendPeers {
        to: b,
        known: vec![a[1].clone()]
    }));
    // C dialed us: we do not know its address until it says.
    assert!(matches!(m.up(c, 2, false, MS), Admit::Keep { .. }));
    let told_c = drain(&mut m);
    assert!(
        told_c.contains(&Output::SendPeers {
            to: c,
            known: vec![a[1].clone()]
        }),
        "{told_c:?}"
    );
    m.peers_received(c, a[2].clone(), vec![a[3].clone()], MS);
    let out = drain(&mut m);
    assert!(out.contains(&Output::SaveAddr {
        peer: c,
        addr: a[2].clone()
    }));
    assert!(out.contains(&Output::SendPeers {
        to: b,
        known: vec![a[2].clone()]
    }));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::SendPeers { to, .. } if *to == c)),
        "not introduced to itself"
    );
    assert_eq!(m.all_peers().len(), 3, "learned the fourth node too");
    // The same address again is no news: saved again, introduced to nobody.
    m.peers_received(c, a[2].clone(), vec![], MS);
    let out = drain(&mut m);
    assert!(!out.iter().any(|o| matches!(o, Output::SendPeers { .. })));
    // A peer that claims someone else's address, or is not connected, teaches only the list.
    m.peers_received(b, a[3].clone(), vec![], MS);
    assert!(drain(&mut m).is_empty());
    let many = addrs(100);
    let mut small = Membership::new(me, 2);
    small.learn(a[1].clone(), Duration::ZERO);
    small.up(b, 1, true, Duration::ZERO);
    small.peers_received(b, a[1].clone(), many, MS);
    assert_eq!(
        small.all_peers().len(),
        1 + 8,
        "at most 4 × max_peers taken"
    );
}
