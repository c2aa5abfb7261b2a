//! `murmur`: a command-line Murmur node.
//!
//! `murmur run` runs a node and reads commands from standard input (type `help`); the other
//! subcommands open the data directory, do one thing and exit (they cannot run while a node
//! holds the same directory: that gives a clear "in use" error).

use std::{io::Write, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use murmur::{CompactionPolicy, Durability, Event, PathKind, RelayMode, Swarm, SwarmBuilder};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser, Debug)]
#[command(
    name = "murmur",
    version,
    about = "A node of a Murmur swarm: a replicated key-value map over iroh"
)]
struct Cli {
    /// Data directory of the node.
    #[arg(long, short = 'd', default_value = "./murmur_data", global = true)]
    data: PathBuf,
    /// Swarm name (an open swarm: anyone knowing the name can join).
    #[arg(long, global = true, conflicts_with = "swarm_key")]
    swarm_name: Option<String>,
    /// Swarm key: 64 hex characters (a closed swarm).
    #[arg(long, global = true)]
    swarm_key: Option<String>,
    /// Local UDP address to bind, e.g. 127.0.0.1:7000 (default: all interfaces, random port).
    #[arg(long, global = true)]
    bind: Option<SocketAddr>,
    /// Relay servers: `default` (iroh's public relays), `disabled`, or a relay URL.
    #[arg(long, default_value = "default", global = true)]
    relay: String,
    /// Disable mDNS discovery on the local network.
    #[arg(long, global = true)]
    no_mdns: bool,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 2000, global = true)]
    heartbeat_ms: u64,
    /// Leader timeout in milliseconds (greater than the heartbeat).
    #[arg(long, default_value_t = 5000, global = true)]
    leader_timeout_ms: u64,
    /// What an acknowledged write survives.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Full, global = true)]
    durability: DurabilityArg,
    /// Compaction: `auto` (the leader starts a new history epoch by the thresholds below) or
    /// `manual` (only the `compact` command does).
    #[arg(long, value_enum, default_value_t = CompactionArg::Auto, global = true)]
    compaction: CompactionArg,
    /// Compact once stored history exceeds this many times the live data...
    #[arg(long, default_value_t = 4, global = true)]
    compaction_ratio: u32,
    /// ...and this many KiB.
    #[arg(long, default_value_t = 64, global = true)]
    compaction_min_kib: u64,
    /// At most one automatic compaction per this many milliseconds.
    #[arg(long, default_value_t = 5000, global = true)]
    compaction_interval_ms: u64,
    /// Refuse writes while this node's clock is more than this many milliseconds off the
    /// median of its peers' clocks.
    #[arg(long, default_value_t = 60_000, global = true)]
    max_clock_offset_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    /// Survives power loss.
    Full,
    /// Survives a crash of the process.
    Process,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompactionArg {
    /// By policy, on the leader's timer.
    Auto,
    /// Only on request.
    Manual,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: print its ticket, then read commands from stdin until `quit`, EOF is ignored
    /// (the node keeps running; stop it with Ctrl-C or SIGTERM).
    Run {
        /// Tickets or `<node-id>@<ip>:<port>` of peers to join through.
        #[arg(long, short = 'b')]
        bootstrap: Vec<String>,
        /// Print every event (puts, deletes, leader changes, peers) as it happens.
        #[arg(long)]
        watch: bool,
    },
    /// Set a key (offline: peers receive it when the node next runs).
    Put { key: String, value: String },
    /// Print a key's value.
    Get { key: String },
    /// Delete a key.
    Delete { key: String },
    /// List keys (with a prefix, those starting with it) and their values.
    List { prefix: Option<String> },
    /// Print this node's ID.
    Id,
}

fn builder(cli: &Cli) -> Result<SwarmBuilder, String> {
    let policy = CompactionPolicy {
        automatic: matches!(cli.compaction, CompactionArg::Auto),
        ratio: cli.compaction_ratio,
        min_bytes: cli.compaction_min_kib.saturating_mul(1024),
        min_interval: Duration::from_millis(cli.compaction_interval_ms),
        ..CompactionPolicy::default()
    };
    let mut b = Swarm::builder()
        .compaction(policy)
        .storage_path(&cli.data)
        .local_discovery(!cli.no_mdns)
        .heartbeat_interval(Duration::from_millis(cli.heartbeat_ms))
        .leader_timeout(Duration::from_millis(cli.leader_timeout_ms))
        .max_clock_offset(Duration::from_millis(cli.max_clock_offset_ms))
        .durability(match cli.durability {
            DurabilityArg::Full => Durability::Full,
            DurabilityArg::Process => Durability::Process,
        })
        .relay_mode(match cli.relay.as_str() {
            "default" => RelayMode::Default,
            "disabled" => RelayMode::Disabled,
            url => RelayMode::Custom(url.to_string()),
        });
    if let Some(name) = &cli.swarm_name {
        b = b.swarm_name(name);
    }
    if let Some(hex) = &cli.swarm_key {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(hex.as_bytes())
            .map_err(|_| "--swarm-key must be 64 hex characters".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "--swarm-key must be 64 hex characters (32 bytes)".to_string())?;
        b = b.swarm_key(key);
    }
    if let Some(addr) = cli.bind {
        b = b.bind_addr(addr);
    }
    Ok(b)
}

fn show(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", data_encoding::HEXLOWER.encode(v)),
    }
}

fn print_event(e: &Event) {
    match e {
        Event::Put { key, value, origin } => {
            println!("event put {key} = {} (from {})", show(value), &origin[..10])
        }
        Event::Deleted { key, origin } => println!("event delete {key} (from {})", &origin[..10]),
        Event::LeaderChanged { leader, term } => println!(
            "event leader {} term {term}",
            leader.as_deref().unwrap_or("none")
        ),
        Event::PeerUp { peer } => println!("event peer-up {peer}"),
        Event::PeerDown { peer } => println!("event peer-down {peer}"),
        Event::Lagged { missed } => println!("event lagged {missed}"),
        Event::Compacted {
            epoch,
            keys,
            bytes_before,
            bytes_after,
            ..
        } => println!(
            "event compacted epoch {epoch}: {keys} keys, {bytes_before} -> {bytes_after} bytes"
        ),
    }
}

const HELP: &str = "commands:
  put <key> <value>    set a key (the rest of the line is the value)
  get <key>            print a key's value
  del <key>            delete a key
  list [prefix]        list keys and values
  count                number of keys
  digest               number of keys and a hash of every key and value (equal digests: equal maps)
  peers                known peers: connected, direct or relayed, round-trip time, clock
                       offset (how far the peer's clock is ahead of this node's)
  leader               the leader, its term, and whether it is this node
  ticket               this node's ticket
  addrs                this node's addresses (direct ones, and its home relay once connected)
  id                   this node's ID
  compact              start a new history epoch now (asks the leader if this node follows)
  epoch                the history epoch of this replica: its number, term and leader
  watch on|off         print events as they happen
  quit                 shut down gracefully";

/// Executes one interactive command; returns false on `quit`.
async fn execute(swarm: &Swarm, line: &str, watch: &mut bool) -> bool {
    let line = line.trim();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let r: Result<(), murmur::Error> = async {
        match cmd {
            "" => {}
            "help" => println!("{HELP}"),
            "put" => match rest.split_once(' ') {
                Some((k, v)) => {
                    swarm.put(k, v.as_bytes()).await?;
                    println!("ok");
                }
                None => println!("error: usage: put <key> <value>"),
            },
            "get" => match swarm.get(rest).await? {
                Some(v) => println!("{}", show(&v)),
                None => println!("(none)"),
            },
            "del" | "delete" => {
                swarm.delete(rest).await?;
                println!("ok");
            }
            "list" => {
                for k in swarm.keys(rest).await? {
                    if let Some(v) = swarm.get(&k).await? {
                        println!("{k} = {}", show(&v));
                    }
                }
            }
            "count" => println!("{}", swarm.len().await?),
            "digest" => {
                let mut h = blake3::Hasher::new();
                let keys = swarm.keys("").await?;
                for k in &keys {
                    let v = swarm.get(k).await?.unwrap_or_default();
                    for part in [k.as_bytes(), &v] {
                        h.update(&(part.len() as u64).to_be_bytes());
                        h.update(part);
                    }
                }
                println!("{} {}", keys.len(), &h.finalize().to_hex()[..16]);
            }
            "peers" => {
                for p in swarm.peers().await {
                    let path = match p.path {
                        PathKind::Direct => "direct",
                        PathKind::Relayed => "relayed",
                        PathKind::None => "-",
                    };
                    let rtt = p.rtt.map(|r| format!("{:.2}ms", r.as_secs_f64() * 1e3));
                    // The peer's clock relative to this node's: `clock +1200ms` runs ahead.
                    let clock = p
                        .clock_offset_ms
                        .map_or_else(|| "-".to_string(), |o| format!("{o:+}ms"));
                    println!(
                        "{} {} {path} {} clock {clock}",
                        p.id,
                        if p.connected {
                            "connected"
                        } else {
                            "disconnected"
                        },
                        rtt.unwrap_or_else(|| "-".into())
                    );
                }
            }
            "leader" => println!(
                "leader {} term {} me {}",
                swarm.leader_id().await.as_deref().unwrap_or("none"),
                swarm.leader_term().await,
                swarm.is_leader().await
            ),
            "compact" => {
                swarm.compact().await?;
                println!("ok");
            }
            "epoch" => {
                let e = swarm.epoch();
                let leader = data_encoding::HEXLOWER.encode(&e.leader);
                println!("epoch {} term {} leader {leader}", e.n, e.term);
            }
            "ticket" => println!("{}", swarm.ticket()),
            "addrs" => println!("{}", swarm.addrs().join(" ")),
            "id" => println!("{}", swarm.node_id()),
            "watch" => {
                *watch = rest != "off";
                println!("watch {}", if *watch { "on" } else { "off" });
            }
            "quit" | "exit" => return Ok(()),
            other => println!("error: unknown command {other:?} (type help)"),
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        println!("error: {e}");
    }
    let _ = std::io::stdout().flush();
    !matches!(cmd, "quit" | "exit")
}

async fn run(cli: &Cli, bootstrap: &[String], mut watch: bool) -> Result<(), String> {
    let swarm = builder(cli)?
        .bootstrap(bootstrap.iter().cloned())
        .build()
        .await
        .map_err(|e| e.to_string())?;
    swarm.start().await.map_err(|e| e.to_string())?;
    println!("id: {}", swarm.node_id());
    println!("ticket: {}", swarm.ticket());
    println!("ready (type help)");
    let _ = std::io::stdout().flush();

    let mut events = swarm.subscribe();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => {
                    if !execute(&swarm, &l, &mut watch).await {
                        break;
                    }
                }
                // No more input (e.g. started in the background): keep serving.
                _ => stdin_open = false,
            },
            Some(e) = events.recv() => {
                if watch {
                    print_event(&e);
                    let _ = std::io::stdout().flush();
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    swarm.shutdown().await.map_err(|e| e.to_string())?;
    println!("shut down");
    Ok(())
}

async fn one_shot(cli: &Cli) -> Result<(), String> {
    let swarm = builder(cli)?.build().await.map_err(|e| e.to_string())?;
    let r: Result<(), murmur::Error> = async {
        match &cli.command {
            Command::Put { key, value } => swarm.put(key, value.as_bytes()).await?,
            Command::Get { key } => match swarm.get(key).await? {
                Some(v) => println!("{}", show(&v)),
                None => return Err(murmur::Error::Config(format!("key {key:?} not found"))),
            },
            Command::Delete { key } => swarm.delete(key).await?,
            Command::List { prefix } => {
                for k in swarm.keys(prefix.as_deref().unwrap_or("")).await? {
                    if let Some(v) = swarm.get(&k).await? {
                        println!("{k} = {}", show(&v));
                    }
                }
            }
            Command::Id => println!("{}", swarm.node_id()),
            Command::Run { .. } => unreachable!("handled by run"),
        }
        Ok(())
    }
    .await;
    let closed = swarm.shutdown().await;
    r.map_err(|e| e.to_string())?;
    closed.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run { bootstrap, watch } => run(&cli, bootstrap, *watch).await,
        _ => one_shot(&cli).await,
    };
    if let Err(e) = result {
        eprintln!("murmur: {e}");
        std::process::exit(1);
    }
}
