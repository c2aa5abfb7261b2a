//! `murmur`: a command-line Murmur node.
//!
//! `murmur run` runs a node and reads commands from standard input (type `help`); the other
//! subcommands open the data directory, do one thing and exit (they cannot run while a node
//! holds the same directory: that gives a clear "in use" error).
//!
//! Output never stops the node: once stdout is gone (a reader such as `| head` exited), later
//! output is dropped and the node keeps serving its peers until a signal or `quit` stops it.

use std::{
    io::{self, BufRead, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use murmur::{
    CompactionPolicy, Durability, Event, PathKind, RelayMode, Swarm, SwarmBuilder,
    DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN, MAX_VALUE_SIZE_LIMIT,
};
use tokio::signal::unix::{signal, SignalKind};

/// Set once a write to stdout failed (its reader went away): later output is dropped.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout and flushes it. A failed write (`EPIPE` once the reader is gone:
/// Rust ignores `SIGPIPE`) does not panic, unlike `println!`: output stops, the node does not.
fn say_line(args: std::fmt::Arguments) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if writeln!(out, "{args}").and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

/// `println!` that survives a closed stdout (see [`say_line`]).
macro_rules! say {
    ($($arg:tt)*) => { say_line(format_args!($($arg)*)) };
}

/// Longest line read on stdin: a `put` of the largest value any node accepts, with the longest
/// key. A longer line is discarded (without being held in memory) and reported.
const MAX_LINE: usize = MAX_VALUE_SIZE_LIMIT + MAX_KEY_LEN + 64;

/// How many characters of an unrecognised command an error message repeats.
const ECHO_CHARS: usize = 80;

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
    #[arg(long, default_value_t = 4, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    compaction_ratio: u32,
    /// ...and this many KiB.
    #[arg(long, default_value_t = 64, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    compaction_min_kib: u64,
    /// At most one automatic compaction per this many milliseconds.
    #[arg(long, default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    compaction_interval_ms: u64,
    /// Largest value this node's own `put` accepts, in bytes (at most 8 MiB). Values received
    /// from peers are not held to it: give every member of a swarm the same limit.
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_SIZE, global = true)]
    max_value_size: usize,
    /// Most peers connected at once (the bound of the full mesh).
    #[arg(long, default_value_t = 64, global = true)]
    max_peers: usize,
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
        .max_value_size(cli.max_value_size)
        .max_peers(cli.max_peers)
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

/// The first characters of a node ID, enough to tell nodes apart in event lines.
fn short(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

fn print_event(e: &Event) {
    match e {
        Event::Put { key, value, origin } => {
            say!("event put {key} = {} (from {})", show(value), short(origin))
        }
        Event::Deleted { key, origin } => say!("event delete {key} (from {})", short(origin)),
        Event::LeaderChanged { leader, term } => say!(
            "event leader {} term {term}",
            leader.as_deref().unwrap_or("none")
        ),
        Event::PeerUp { peer } => say!("event peer-up {peer}"),
        Event::PeerDown { peer } => say!("event peer-down {peer}"),
        Event::Lagged { missed } => say!("event lagged {missed}"),
        Event::Compacted {
            epoch,
            keys,
            bytes_before,
            bytes_after,
            ..
        } => say!(
            "event compacted epoch {epoch}: {keys} keys, {bytes_before} -> {bytes_after} bytes"
        ),
        Event::StorageFailed { error } => say!("event storage-failed {error}"),
        Event::StorageRecovered => say!("event storage-recovered"),
    }
}

const HELP: &str = "commands:
  put <key> <value>    set a key (the value is the rest of the line after one space, verbatim)
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

/// `s` cut to its first `max` characters, with an ellipsis when something was cut: what an
/// error message repeats of a user's input.
fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// Executes one interactive command (a line of stdin without its terminator); returns false on
/// `quit`.
async fn execute(swarm: &Swarm, raw: &[u8], watch: &mut bool) -> bool {
    let line = match std::str::from_utf8(raw) {
        Ok(line) => line,
        Err(e) => {
            say!(
                "error: the line is not valid UTF-8 (invalid byte at offset {}); ignored, commands are UTF-8 text",
                e.valid_up_to()
            );
            return true;
        }
    };
    let line = line.trim_start();
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args = rest.trim();
    let r: Result<(), murmur::Error> = async {
        match cmd {
            "" => {}
            "help" => say!("{HELP}"),
            // The key ends at the first space; the value is everything after that one space,
            // verbatim (spaces included).
            "put" => match rest.trim_start().split_once(' ') {
                Some((k, v)) => {
                    swarm.put(k, v.as_bytes()).await?;
                    say!("ok");
                }
                None => say!("error: usage: put <key> <value>"),
            },
            "get" => match swarm.get(args).await? {
                Some(v) => say!("{}", show(&v)),
                None => say!("(none)"),
            },
            "del" | "delete" => {
                swarm.delete(args).await?;
                say!("ok");
            }
            "list" => {
                for k in swarm.keys(args).await? {
                    if let Some(v) = swarm.get(&k).await? {
                        say!("{k} = {}", show(&v));
                    }
                }
            }
            "count" => say!("{}", swarm.len().await?),
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
                say!("{} {}", keys.len(), &h.finalize().to_hex()[..16]);
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
                    say!(
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
            "leader" => say!(
                "leader {} term {} me {}",
                swarm.leader_id().await.as_deref().unwrap_or("none"),
                swarm.leader_term().await,
                swarm.is_leader().await
            ),
            "compact" => {
                swarm.compact().await?;
                say!("ok");
            }
            "epoch" => {
                let e = swarm.epoch();
                let leader = data_encoding::HEXLOWER.encode(&e.leader);
                say!("epoch {} term {} leader {leader}", e.n, e.term);
            }
            "ticket" => say!("{}", swarm.ticket()),
            "addrs" => say!("{}", swarm.addrs().join(" ")),
            "id" => say!("{}", swarm.node_id()),
            "watch" => match args {
                "on" | "off" => {
                    *watch = args == "on";
                    say!("watch {args}");
                }
                _ => say!("error: usage: watch on|off"),
            },
            "quit" | "exit" => {}
            other => say!(
                "error: unknown command {:?} (type help)",
                truncated(other, ECHO_CHARS)
            ),
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        say!("error: {e}");
    }
    !matches!(cmd, "quit" | "exit")
}

/// One line of stdin.
enum Input {
    /// A line, without its `\n` or `\r\n`.
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE`], discarded.
    TooLong,
}

/// Reads one line of bytes (valid UTF-8 or not), keeping at most `max` bytes of it in memory.
/// `None` at end of input.
fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<Input>> {
    let mut line = Vec::new();
    let (mut too_long, mut read_any) = (false, false);
    loop {
        let buf = match r.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        read_any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        if !too_long && line.len() + chunk.len() > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        let used = newline.map_or(buf.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            break;
        }
    }
    Ok(match (read_any, too_long) {
        (false, _) => None,
        (true, true) => Some(Input::TooLong),
        (true, false) => {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Some(Input::Line(line))
        }
    })
}

/// Reads stdin on a thread of its own, a line at a time (the channel closes at end of input).
/// A plain thread rather than tokio's stdin, whose blocking read would hold up the runtime's
/// shutdown until the next line arrived.
fn read_stdin() -> tokio::sync::mpsc::Receiver<Input> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let spawned = std::thread::Builder::new()
        .name("murmur-stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut r = stdin.lock();
            while let Ok(Some(input)) = read_line(&mut r, MAX_LINE) {
                if tx.blocking_send(input).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        let _ = writeln!(io::stderr(), "murmur: cannot read commands from stdin: {e}");
    }
    rx
}

/// Why the program stops with a failure status.
enum Failure {
    /// Exit status 1.
    Error(String),
    /// Exit status 3 (clap's usage errors take 2): a one-shot `get` found no value.
    NotFound(String),
}

impl From<murmur::Error> for Failure {
    fn from(e: murmur::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Error(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

async fn run(cli: &Cli, bootstrap: &[String], mut watch: bool) -> Result<(), Failure> {
    // Signal handlers first: a signal that arrives while the store opens stops the node
    // gracefully once it is up, instead of killing it.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let swarm = builder(cli)?
        .bootstrap(bootstrap.iter().cloned())
        .build()
        .await?;
    swarm.start().await?;
    say!("id: {}", swarm.node_id());
    say!("ticket: {}", swarm.ticket());
    say!("ready (type help)");

    let mut events = swarm.subscribe();
    let mut input = read_stdin();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            line = input.recv(), if stdin_open => match line {
                Some(Input::Line(l)) => {
                    if !execute(&swarm, &l, &mut watch).await {
                        break;
                    }
                }
                Some(Input::TooLong) => say!(
                    "error: line longer than {MAX_LINE} bytes ignored (no command needs more)"
                ),
                // No more input (e.g. started in the background): keep serving.
                None => stdin_open = false,
            },
            Some(e) = events.recv() => {
                if watch {
                    print_event(&e);
                }
            }
        }
    }
    swarm.shutdown().await?;
    say!("shut down");
    Ok(())
}

async fn one_shot(cli: &Cli) -> Result<(), Failure> {
    let swarm = builder(cli)?.build().await?;
    let r: Result<(), Failure> = async {
        match &cli.command {
            Command::Put { key, value } => swarm.put(key, value.as_bytes()).await?,
            Command::Get { key } => match swarm.get(key).await? {
                Some(v) => say!("{}", show(&v)),
                None => return Err(Failure::NotFound(format!("key {key:?} not found"))),
            },
            Command::Delete { key } => swarm.delete(key).await?,
            Command::List { prefix } => {
                for k in swarm.keys(prefix.as_deref().unwrap_or("")).await? {
                    if let Some(v) = swarm.get(&k).await? {
                        say!("{k} = {}", show(&v));
                    }
                }
            }
            Command::Id => say!("{}", swarm.node_id()),
            Command::Run { .. } => {}
        }
        Ok(())
    }
    .await;
    let closed = swarm.shutdown().await;
    r?;
    closed.map_err(Failure::from)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run { bootstrap, watch } => run(&cli, bootstrap, *watch).await,
        _ => one_shot(&cli).await,
    };
    let code = match result {
        Ok(()) => 0,
        Err(Failure::Error(e)) => {
            let _ = writeln!(io::stderr(), "murmur: {e}");
            1
        }
        Err(Failure::NotFound(e)) => {
            let _ = writeln!(io::stderr(), "murmur: {e}");
            3
        }
    };
    // Exit here rather than by dropping the runtime: the node is shut down (or never ran), and
    // nothing left (a thread blocked reading stdin, say) may hold the process up.
    std::process::exit(code);
}
