//! A local iroh relay server over plain HTTP, for tests of the relay path without internet:
//! `cargo run --example local_relay -- 127.0.0.1:3340`. Prints `relay: http://<addr>` and runs
//! until killed. Nodes use it with `relay_mode(RelayMode::Custom(url))` / `--relay <url>`.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let mut cfg = iroh_relay::server::ServerConfig::default();
    cfg.relay = Some(iroh_relay::server::RelayConfig::new(addr));
    let server = iroh_relay::server::Server::spawn(cfg).await?;
    let bound = server.http_addr().ok_or("relay has no http address")?;
    println!("relay: http://{bound}");
    tokio::signal::ctrl_c().await?;
    server.shutdown().await?;
    Ok(())
}
