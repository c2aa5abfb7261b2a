//! The README quickstart, runnable offline: `cargo run --example basic`.
//!
//! The only differences from the README snippet: a temporary data directory, and networking
//! pinned to 127.0.0.1 with relays and LAN discovery off, so it runs on a machine with no
//! network at all.

use murmur::{RelayMode, Swarm};

#[tokio::main]
async fn main() -> murmur::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| murmur::Error::Storage(e.to_string()))?;
    let swarm = Swarm::builder()
        .storage_path(dir.path().join("data"))
        .bind_addr("127.0.0.1:0".parse().expect("valid address"))
        .relay_mode(RelayMode::Disabled)
        .local_discovery(false)
        .build()
        .await?;
    swarm.start().await?; // begins networking and election

    swarm.put("user:123", b"Alice").await?;
    let value = swarm.get("user:123").await?;
    println!(
        "user:123 = {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    swarm.delete("user:123").await?;
    println!("after delete: {:?}", swarm.get("user:123").await?);

    println!("node id: {}", swarm.node_id());
    println!("ticket:  {}", swarm.ticket());
    // A new node first listens for one leader_timeout (default 5 s) for an existing leader
    // before it claims leadership, so right after start there is usually none yet.
    println!(
        "leader:  {:?} (me: {})",
        swarm.leader_id().await,
        swarm.is_leader().await
    );
    swarm.shutdown().await?; // graceful
    Ok(())
}
