//! A three-node swarm in one process, on 127.0.0.1 with relays disabled:
//! `cargo run --example demo`.
//!
//! Shows a write replicating, the elected leader, the leader shutting down and a new one
//! taking over. Exits by itself.

use std::time::{Duration, Instant};

use murmur::{Event, RelayMode, Swarm};

const HEARTBEAT: Duration = Duration::from_millis(250);
const LEADER_TIMEOUT: Duration = Duration::from_millis(1000);

async fn start_node(dir: &std::path::Path, bootstrap: &[String]) -> murmur::Result<Swarm> {
    let swarm = Swarm::builder()
        .storage_path(dir)
        .swarm_name("murmur-demo")
        .bind_addr("127.0.0.1:0".parse().expect("valid address"))
        .relay_mode(RelayMode::Disabled)
        .local_discovery(false)
        .heartbeat_interval(HEARTBEAT)
        .leader_timeout(LEADER_TIMEOUT)
        .bootstrap(bootstrap.iter().cloned())
        .build()
        .await?;
    swarm.start().await?;
    Ok(swarm)
}

fn short(id: &str) -> &str {
    &id[..10]
}

/// Waits (up to 20 s) until every node names the same leader; returns it.
async fn agreed_leader(nodes: &[&Swarm]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let first = nodes[0].leader_id().await;
        let mut same = first.is_some();
        for n in &nodes[1..] {
            same &= n.leader_id().await == first;
        }
        if same {
            return first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::main]
async fn main() -> murmur::Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| murmur::Error::Storage(e.to_string()))?;
    println!("== Murmur demo: three nodes on 127.0.0.1 (relays off, heartbeat {HEARTBEAT:?}, leader timeout {LEADER_TIMEOUT:?})\n");

    let a = start_node(&tmp.path().join("a"), &[]).await?;
    let b = start_node(&tmp.path().join("b"), &[a.ticket()]).await?;
    let c = start_node(&tmp.path().join("c"), &[b.ticket()]).await?;
    for (name, n) in [("A", &a), ("B", &b), ("C", &c)] {
        println!("node {name}: {}", short(&n.node_id()));
    }
    println!("(C was only told about B; peer exchange connects it to A too)\n");

    // 1. A write on A shows up on C.
    let mut events_c = c.subscribe();
    let t0 = Instant::now();
    a.put("greeting", b"hello from A").await?;
    println!("A put  greeting = \"hello from A\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events_c.recv()).await {
            Ok(Some(Event::Put { key, value, origin })) if key == "greeting" => {
                println!(
                    "C sees greeting = {:?} (written by {}) after {:?}\n",
                    String::from_utf8_lossy(&value),
                    short(&origin),
                    t0.elapsed()
                );
                break;
            }
            Ok(Some(_)) => continue,
            _ => {
                println!("C did not receive the write in time");
                std::process::exit(1);
            }
        }
    }

    // 2. The leader: the greatest node ID.
    let nodes = [("A", &a), ("B", &b), ("C", &c)];
    let Some(leader) = agreed_leader(&[&a, &b, &c]).await else {
        println!("no agreement on a leader");
        std::process::exit(1);
    };
    let (leader_name, leader_node) = nodes
        .iter()
        .find(|(_, n)| n.node_id() == leader)
        .copied()
        .expect("the leader is one of the three");
    println!(
        "leader: node {leader_name} ({}), term {} -- every node agrees",
        short(&leader),
        a.leader_term().await
    );

    // 3. The leader leaves; the others elect the greatest remaining ID.
    println!("\nshutting down the leader, node {leader_name} ...");
    let t1 = Instant::now();
    leader_node.shutdown().await?;
    let rest: Vec<(&str, &Swarm)> = nodes
        .iter()
        .filter(|(n, _)| *n != leader_name)
        .copied()
        .collect();
    let Some(new_leader) = agreed_leader(&[rest[0].1, rest[1].1]).await else {
        println!("no new leader");
        std::process::exit(1);
    };
    let new_name = rest
        .iter()
        .find(|(_, n)| n.node_id() == new_leader)
        .map(|(n, _)| *n)
        .unwrap_or("?");
    println!(
        "new leader: node {new_name} ({}), term {}, agreed after {:?}",
        short(&new_leader),
        rest[0].1.leader_term().await,
        t1.elapsed()
    );

    // 4. The survivors still replicate.
    rest[0].1.put("after-failover", b"still working").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rest[1].1.get("after-failover").await?.is_none() {
        if Instant::now() > deadline {
            println!("write after failover did not replicate");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "node {} put after-failover; node {} has it\n",
        rest[0].0, rest[1].0
    );
    for (_, n) in rest {
        n.shutdown().await?;
    }
    println!("== done");
    Ok(())
}
