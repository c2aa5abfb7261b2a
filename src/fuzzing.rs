//! Entry points for the fuzz targets in `fuzz/` (hidden: not part of the public API).
//!
//! One function per decoder of bytes that come from outside: control and data frames, pushed
//! changes and sync messages applied to a replica, election messages, tickets, and the files of
//! a data directory. None may panic, whatever the input. `tests` runs each on seeded random
//! inputs in the normal test suite; `cargo fuzz` (see `fuzz/`) searches much harder.

use crate::history::EpochId;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::Duration,
};

use automerge::sync::State;

use crate::{
    doc::{value_hash, KvDoc},
    election::{Config, Election, Message},
    net::{
        ticket,
        wire::{decode_body, ControlMsg},
    },
    store::{Durability, Store},
    sync::{DataMsg, PeerSync},
};

/// Decodes a control-stream frame body.
pub fn control_frame(data: &[u8]) {
    let _ = decode_body::<ControlMsg>(data);
}

/// Decodes a data-stream frame body.
pub fn data_frame(data: &[u8]) {
    let _ = decode_body::<DataMsg>(data);
}

/// Parses a ticket or node address.
pub fn parse_ticket(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ticket::parse(s);
    }
}

/// A small document and, from it, one valid change and one valid sync message, to mutate.
fn templates() -> &'static (Vec<u8>, Vec<u8>) {
    static T: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        let Ok(mut d) = KvDoc::load(None, &[], &[7; 32], &EpochId::ZERO) else {
            return (Vec::new(), Vec::new());
        };
        let mut change = Vec::new();
        for i in 0..4u8 {
            let _ = d.put(&format!("k{i}"), &value_hash(&[i]), u64::from(i) + 1);
            if let Some(c) = d.commit() {
                change = c.raw_bytes().to_vec();
            }
        }
        let _ = d.delete("k1", 9);
        d.commit();
        let sync = d
            .generate_sync_message(&mut State::new())
            .map(|(bytes, _)| bytes)
            .unwrap_or_default();
        (change, sync)
    })
}

/// Flips bytes of `template` as directed by `data` (pairs of position, xor mask).
fn mutate(template: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = template.to_vec();
    if out.is_empty() {
        return data.to_vec();
    }
    for pair in data.chunks(3) {
        if let [a, b, x] = pair {
            let pos = u16::from_be_bytes([*a, *b]) as usize % out.len();
            out[pos] ^= *x;
        }
    }
    out
}

/// Applies peer input to a replica that holds some data: raw or mutated changes and sync
/// messages, and whole data frames. Afterwards the replica must still answer.
pub fn sync_input(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut doc) = KvDoc::load(None, &[], &[9; 32], &EpochId::ZERO) else {
        return;
    };
    let _ = doc.put("existing", &value_hash(b"v"), 1);
    doc.commit();
    let mut peer = PeerSync::new(None);
    let (change, sync) = templates();
    let msgs = match mode % 5 {
        0 => vec![DataMsg::Push {
            epoch: EpochId::ZERO,
            changes: vec![rest.to_vec()],
            values: vec![],
        }],
        1 => vec![DataMsg::Sync {
            epoch: EpochId::ZERO,
            part: rest.to_vec(),
            last: true,
        }],
        2 => vec![DataMsg::Push {
            epoch: EpochId::ZERO,
            changes: vec![mutate(change, rest)],
            values: vec![b"x".to_vec()],
        }],
        3 => vec![DataMsg::Sync {
            epoch: EpochId::ZERO,
            part: mutate(sync, rest),
            last: true,
        }],
        _ => rest
            .split(|b| *b == 0xFF)
            .filter_map(|c| decode_body::<DataMsg>(c).ok())
            .collect(),
    };
    for m in msgs {
        let _ = peer.receive(&mut doc, m);
        let _ = peer.poll(&mut doc, EpochId::ZERO);
    }
    let _ = doc.entries();
    let _ = doc.visible_hashes();
    let _ = doc.save();
}

/// Drives an election state machine with messages, peer changes and ticks read from `data`.
pub fn election(data: &[u8]) {
    let cfg = Config {
        heartbeat_interval: Duration::from_millis(100),
        leader_timeout: Duration::from_millis(500),
    };
    let mut e = Election::new(128u8, 3, cfg, Duration::ZERO);
    let mut now = Duration::ZERO;
    for op in data.chunks(4) {
        let [kind, peer, a, b] = match op {
            [k, p, a, b] => [*k, *p, *a, *b],
            _ => return,
        };
        let term = u64::from(u16::from_be_bytes([a, b])) * (1 + u64::from(kind >> 4));
        match kind % 8 {
            0 => e.peer_up(peer, now),
            1 => e.peer_down(&peer, now),
            2 => e.handle(peer, Message::Election { term }, now),
            3 => e.handle(peer, Message::Answer { term }, now),
            4 => e.handle(peer, Message::Leader { term }, now),
            5 => e.handle(peer, Message::TermHint { term }, now),
            _ => {
                now += Duration::from_millis(u64::from(a) * 4);
                e.tick(now);
            }
        }
        while e.poll_output().is_some() {}
    }
}

/// A valid database holding a document, a value and peer state, as the bytes of its file.
fn db_template() -> &'static Vec<u8> {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch_dir();
        let bytes = (|| -> Option<Vec<u8>> {
            let mut store = Store::open(&dir, Durability::Process).ok()?;
            store.secret_key().ok()?;
            let mut doc = KvDoc::load(None, &[], &[3; 32], &EpochId::ZERO).ok()?;
            doc.put("a", &value_hash(b"1"), 1).ok()?;
            doc.commit()?;
            let mut tx = store.tx().ok()?;
            tx.insert_blob(&value_hash(b"1"), b"1").ok()?;
            // The change and epoch zero's genesis under it.
            for c in doc.changes_since(&[]) {
                tx.insert_change(c.raw_bytes()).ok()?;
            }
            tx.set_peer_sync(&[4; 32], &State::new().encode()).ok()?;
            tx.commit().ok()?;
            drop(store);
            std::fs::read(dir.join("murmur.sqlite3")).ok()
        })();
        let _ = std::fs::remove_dir_all(&dir);
        bytes.unwrap_or_default()
    })
}

fn scratch_dir() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "murmur-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Opens a data directory whose database file is a mutated valid one (mode byte even) or
/// arbitrary bytes (odd), as `SwarmBuilder::build` does: it must fail cleanly or work.
pub fn open_store(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        mutate(db_template(), rest)
    } else {
        rest.to_vec()
    };
    let dir = scratch_dir();
    if std::fs::create_dir_all(&dir).is_ok()
        && std::fs::write(dir.join("murmur.sqlite3"), file).is_ok()
    {
        if let Ok(mut store) = Store::open(&dir, Durability::Process) {
            let _ = store.secret_key();
            let _ = store.meta_i64("term");
            let _ = store.peer_sync_states();
            let _ = store.peer_addrs();
            if let Ok(stored) = store.load_doc() {
                let epoch = store.epoch().unwrap_or(EpochId::ZERO);
                let (snapshot, changes) = (stored.snapshot.as_deref(), &stored.changes);
                if let Ok(doc) = KvDoc::load(snapshot, changes, &[1; 32], &epoch) {
                    for (_, e) in doc.entries() {
                        let _ = store.blob(&e.hash);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Every entry point on seeded random inputs: a smoke test that runs in the normal suite.
    #[test]
    fn entry_points_survive_random_input() {
        let mut rng = StdRng::seed_from_u64(0x6d75726d);
        type Target = fn(&[u8]);
        let targets: [(Target, usize); 6] = [
            (super::control_frame, 2000),
            (super::data_frame, 2000),
            (super::parse_ticket, 2000),
            (super::sync_input, 600),
            (super::election, 2000),
            (super::open_store, 60),
        ];
        for (target, runs) in targets {
            for _ in 0..runs {
                let len = rng.random_range(0..300);
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                target(&data);
            }
        }
    }
}
