//! Helpers for in-process multi-node tests: loopback only, no relays, no discovery, short
//! election timings, and waiting on conditions with deadlines (never bare sleeps).
#![allow(dead_code)]

use std::{future::Future, path::Path, time::Duration};

use murmur::{RelayMode, Swarm, SwarmBuilder};

pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const LEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// Generous bound for anything to converge on a loaded 2-core CI machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A builder for a test node: 127.0.0.1, relays and mDNS off, fast election.
pub fn builder(dir: &Path) -> SwarmBuilder {
    Swarm::builder()
        .storage_path(dir)
        .swarm_name("murmur-tests")
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .relay_mode(RelayMode::Disabled)
        .local_discovery(false)
        .heartbeat_interval(HEARTBEAT)
        .leader_timeout(LEADER_TIMEOUT)
}

/// Builds and starts a node that bootstraps from `peers` (tickets).
pub async fn node(dir: &Path, peers: &[String]) -> Swarm {
    let s = builder(dir)
        .bootstrap(peers.iter().cloned())
        .build()
        .await
        .expect("build");
    s.start().await.expect("start");
    s
}

/// Polls `cond` until it holds or `DEADLINE` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {DEADLINE:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every key and value of a node.
pub async fn dump(s: &Swarm) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in s.keys("").await.unwrap() {
        if let Some(v) = s.get(&k).await.unwrap() {
            out.push((k, v));
        }
    }
    out
}

/// Waits until all nodes hold identical maps, and returns that map.
pub async fn converge(nodes: &[&Swarm]) -> Vec<(String, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let first = dump(nodes[0]).await;
        let mut same = true;
        for n in &nodes[1..] {
            if dump(n).await != first {
                same = false;
                break;
            }
        }
        if same {
            return first;
        }
        if tokio::time::Instant::now() > deadline {
            let mut maps = Vec::new();
            for n in nodes {
                maps.push(n.keys("").await.unwrap_or_default());
            }
            panic!("replicas did not converge within {DEADLINE:?}; keys per node: {maps:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node reports `expected` as leader, exactly one says it is the leader.
/// On timeout, panics with what each node believed.
pub async fn agree_on_leader(nodes: &[&Swarm], expected: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut views = Vec::new();
        for n in nodes {
            views.push((
                n.node_id(),
                n.leader_id().await,
                n.is_leader().await,
                n.leader_term().await,
            ));
        }
        let agreed = views.iter().all(|v| v.1.as_deref() == Some(expected))
            && views.iter().filter(|v| v.2).count() == 1;
        if agreed {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {DEADLINE:?} waiting for all nodes to agree the leader is \
                 {expected}; (node, leader, is_leader, term) per node: {views:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
