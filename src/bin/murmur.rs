//! `murmur`: a command-line Murmur node.
//!
//! `murmur run` runs a node and reads commands from standard input (type `help`); the other
//! subcommands open the data directory, do one thing and exit (they cannot run while a node
//! holds the same directory: that gives a clear "in use" error).
//!
//! Output never stops the node: once stdout is gone (a reader such as `| head` exited), later
//! output is dropped and the node keeps serving its peers until a signal or `quit` stops it.
//!
//! The stdin protocol (commands, reply formats, `--json`, exit codes) is what scripts read: it
//! is documented in [`PROTOCOL`] (`murmur --help`) and the README, and kept stable.

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
use serde_json::Value as Json;
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

/// The stdin protocol of `murmur run` and the exit codes: shown by `murmur --help` and
/// `murmur run --help`, repeated in the README. Scripts depend on it: keep it stable.
const PROTOCOL: &str = "\
STDIN PROTOCOL (murmur run)
  One command per line (UTF-8; `\\n` or `\\r\\n`); type `help` for the list. Every command
  prints its reply before the next command is read, in one of these formats (stable: scripts
  may rely on them):
    put, del, compact    ok
    get <key>            the value (UTF-8 text as is; other bytes as 0x<hex>), or (none)
    list [prefix]        one line `<key> = <value>` per key, nothing when no key matches
    count                <number of keys>
    digest               <count> <hash>   (16 hex digits; equal digests: equal maps)
    leader               leader <node-id|none> term <n> me <true|false>
    peers                one line per peer:
                         <node-id> <connected|disconnected> <direct|relayed|-> <rtt|-> clock <offset|->
    ticket, id           one line
    addrs                the addresses on one line, separated by spaces
    epoch                epoch <n> term <t> leader <hex>
    watch on|off         watch on / watch off; then events as `event ...` lines
    quit                 shuts down, then prints `shut down`
    anything failing     error: <message>   (the node keeps running)
  At start the node prints `id: <node-id>`, `ticket: <ticket>`, `ready (type help)`.
  End of input does not stop the node (stop it with quit, SIGINT or SIGTERM).

  With `murmur run --json`, every reply, the start banner and every event is instead ONE line
  holding one JSON object:
    start      {\"ready\":true,\"id\":\"..\",\"ticket\":\"..\"}
    success    {\"ok\":true, ...fields...}: get {\"value\":\"..\"|null} (or \"value_hex\" for bytes
               that are not UTF-8), list {\"entries\":[{\"key\",\"value\"}]}, count {\"count\"},
               digest {\"count\",\"hash\"}, leader {\"leader\":id|null,\"term\",\"me\"},
               peers {\"peers\":[{\"id\",\"connected\",\"path\",\"rtt_ms\",\"clock_offset_ms\"}]},
               ticket {\"ticket\"}, id {\"id\"}, addrs {\"addrs\":[..]},
               epoch {\"epoch\",\"term\",\"leader\"}, watch {\"watch\":bool}, help {\"help\"},
               put/del/compact {} (just ok), quit {\"shut_down\":true}
    failure    {\"ok\":false,\"error\":\"<message>\"}
    event      {\"event\":\"put|delete|leader|peer_up|peer_down|lagged|compacted|storage_failed|storage_recovered\", ...}

EXIT CODES
  0  success (run: stopped by quit or a signal, after a graceful shutdown)
  1  error (the message is on stderr; e.g. the data directory is in use by another process)
  2  invalid command line (usage)
  3  get: the key holds no value";

#[derive(Parser, Debug)]
#[command(
    name = "murmur",
    version,
    about = "A node of a Murmur swarm: a replicated key-value map over iroh",
    after_long_help = PROTOCOL
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
    /// (the node keeps running; stop it with Ctrl-C or SIGTERM). `murmur --help` describes the
    /// stdin protocol.
    #[command(after_long_help = PROTOCOL)]
    Run {
        /// Tickets or `<node-id>@<ip>:<port>` of peers to join through.
        #[arg(long, short = 'b')]
        bootstrap: Vec<String>,
        /// Print every event (puts, deletes, leader changes, peers) as it happens.
        #[arg(long)]
        watch: bool,
        /// Print every reply, the start banner and every event as one JSON object per line.
        #[arg(long)]
        json: bool,
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

/// A value in JSON: `{"value": text}` when it is UTF-8, else `{"value_hex": hex}`.
fn json_value(obj: &mut serde_json::Map<String, Json>, v: &[u8]) {
    match std::str::from_utf8(v) {
        Ok(s) => obj.insert("value".into(), Json::from(s)),
        Err(_) => obj.insert("value_hex".into(), data_encoding::HEXLOWER.encode(v).into()),
    };
}

fn event_json(e: &Event) -> Json {
    let mut o = serde_json::Map::new();
    let kind = match e {
        Event::Put { key, value, origin } => {
            o.insert("key".into(), key.as_str().into());
            json_value(&mut o, value);
            o.insert("origin".into(), origin.as_str().into());
            "put"
        }
        Event::Deleted { key, origin } => {
            o.insert("key".into(), key.as_str().into());
            o.insert("origin".into(), origin.as_str().into());
            "delete"
        }
        Event::LeaderChanged { leader, term } => {
            o.insert("leader".into(), leader.clone().into());
            o.insert("term".into(), (*term).into());
            "leader"
        }
        Event::PeerUp { peer } => {
            o.insert("peer".into(), peer.as_str().into());
            "peer_up"
        }
        Event::PeerDown { peer } => {
            o.insert("peer".into(), peer.as_str().into());
            "peer_down"
        }
        Event::Lagged { missed } => {
            o.insert("missed".into(), (*missed).into());
            "lagged"
        }
        Event::Compacted {
            epoch,
            term,
            keys,
            bytes_before,
            bytes_after,
        } => {
            for (k, v) in [
                ("epoch", epoch),
                ("term", term),
                ("keys", keys),
                ("bytes_before", bytes_before),
                ("bytes_after", bytes_after),
            ] {
                o.insert(k.into(), (*v).into());
            }
            "compacted"
        }
        Event::StorageFailed { error } => {
            o.insert("error".into(), error.as_str().into());
            "storage_failed"
        }
        Event::StorageRecovered => "storage_recovered",
    };
    o.insert("event".into(), kind.into());
    Json::Object(o)
}

fn print_event(e: &Event, json: bool) {
    if json {
        say!("{}", event_json(e));
        return;
    }
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

/// The reply to one command: its text form and its JSON form (see [`PROTOCOL`]).
struct Reply {
    /// Lines of the text form (possibly none, as for `list` without a match).
    text: Vec<String>,
    /// The fields of the JSON form besides `"ok": true`.
    json: serde_json::Map<String, Json>,
}

impl Reply {
    fn new(text: impl Into<String>) -> Self {
        Reply {
            text: vec![text.into()],
            json: serde_json::Map::new(),
        }
    }

    fn field(mut self, key: &str, value: impl Into<Json>) -> Self {
        self.json.insert(key.into(), value.into());
        self
    }

    fn ok() -> Self {
        Reply::new("ok")
    }
}

/// Prints a reply or an error, in text or JSON.
fn print_reply(reply: Result<Option<Reply>, String>, json: bool) {
    match (reply, json) {
        (Ok(None), _) => {}
        (Ok(Some(r)), false) => {
            for line in r.text {
                say!("{line}");
            }
        }
        (Ok(Some(r)), true) => {
            let mut o = serde_json::Map::new();
            o.insert("ok".into(), true.into());
            o.extend(r.json);
            say!("{}", Json::Object(o));
        }
        (Err(e), false) => say!("error: {e}"),
        (Err(e), true) => say!("{}", serde_json::json!({ "ok": false, "error": e })),
    }
}

/// Executes one interactive command (a line of stdin without its terminator) and prints its
/// reply; returns false on `quit` (whose reply follows the shutdown).
async fn execute(swarm: &Swarm, raw: &[u8], watch: &mut bool, json: bool) -> bool {
    let line = match std::str::from_utf8(raw) {
        Ok(line) => line,
        Err(e) => {
            print_reply(
                Err(format!(
                    "the line is not valid UTF-8 (invalid byte at offset {}); ignored, commands are UTF-8 text",
                    e.valid_up_to()
                )),
                json,
            );
            return true;
        }
    };
    let line = line.trim_start();
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args = rest.trim();
    let r: Result<Option<Reply>, String> = async {
        let e = |e: murmur::Error| e.to_string();
        Ok(Some(match cmd {
            "" | "quit" | "exit" => return Ok(None),
            "help" => Reply::new(HELP).field("help", HELP),
            // The key ends at the first space; the value is everything after that one space,
            // verbatim (spaces included).
            "put" => match rest.trim_start().split_once(' ') {
                Some((k, v)) => {
                    swarm.put(k, v.as_bytes()).await.map_err(e)?;
                    Reply::ok()
                }
                None => return Err("usage: put <key> <value>".to_string()),
            },
            "get" => match swarm.get(args).await.map_err(e)? {
                Some(v) => {
                    let mut r = Reply::new(show(&v));
                    json_value(&mut r.json, &v);
                    r
                }
                None => Reply::new("(none)").field("value", Json::Null),
            },
            "del" | "delete" => {
                swarm.delete(args).await.map_err(e)?;
                Reply::ok()
            }
            "list" => {
                let mut r = Reply::new("");
                r.text.clear();
                let mut entries = Vec::new();
                for k in swarm.keys(args).await.map_err(e)? {
                    if let Some(v) = swarm.get(&k).await.map_err(e)? {
                        r.text.push(format!("{k} = {}", show(&v)));
                        let mut o = serde_json::Map::new();
                        o.insert("key".into(), k.into());
                        json_value(&mut o, &v);
                        entries.push(Json::Object(o));
                    }
                }
                r.field("entries", entries)
            }
            "count" => {
                let n = swarm.len().await.map_err(e)?;
                Reply::new(n.to_string()).field("count", n)
            }
            "digest" => {
                let mut h = blake3::Hasher::new();
                let keys = swarm.keys("").await.map_err(e)?;
                for k in &keys {
                    let v = swarm.get(k).await.map_err(e)?.unwrap_or_default();
                    for part in [k.as_bytes(), &v] {
                        h.update(&(part.len() as u64).to_be_bytes());
                        h.update(part);
                    }
                }
                let hash = h.finalize().to_hex()[..16].to_string();
                Reply::new(format!("{} {hash}", keys.len()))
                    .field("count", keys.len())
                    .field("hash", hash)
            }
            "peers" => {
                let mut r = Reply::new("");
                r.text.clear();
                let mut peers = Vec::new();
                for p in swarm.peers().await {
                    let path = match p.path {
                        PathKind::Direct => "direct",
                        PathKind::Relayed => "relayed",
                        PathKind::None => "-",
                    };
                    let rtt_ms = p.rtt.map(|r| r.as_secs_f64() * 1e3);
                    let rtt = rtt_ms.map(|r| format!("{r:.2}ms"));
                    // The peer's clock relative to this node's: `clock +1200ms` runs ahead.
                    let clock = p
                        .clock_offset_ms
                        .map_or_else(|| "-".to_string(), |o| format!("{o:+}ms"));
                    let state = if p.connected {
                        "connected"
                    } else {
                        "disconnected"
                    };
                    r.text.push(format!(
                        "{} {state} {path} {} clock {clock}",
                        p.id,
                        rtt.unwrap_or_else(|| "-".into())
                    ));
                    peers.push(serde_json::json!({
                        "id": p.id,
                        "connected": p.connected,
                        "path": if path == "-" { "none" } else { path },
                        "rtt_ms": rtt_ms,
                        "clock_offset_ms": p.clock_offset_ms,
                    }));
                }
                r.field("peers", peers)
            }
            "leader" => {
                let (leader, term, me) = (
                    swarm.leader_id().await,
                    swarm.leader_term().await,
                    swarm.is_leader().await,
                );
                Reply::new(format!(
                    "leader {} term {term} me {me}",
                    leader.as_deref().unwrap_or("none")
                ))
                .field("leader", leader)
                .field("term", term)
                .field("me", me)
            }
            "compact" => {
                swarm.compact().await.map_err(e)?;
                Reply::ok()
            }
            "epoch" => {
                let ep = swarm.epoch();
                let leader = data_encoding::HEXLOWER.encode(&ep.leader);
                Reply::new(format!("epoch {} term {} leader {leader}", ep.n, ep.term))
                    .field("epoch", ep.n)
                    .field("term", ep.term)
                    .field("leader", leader)
            }
            "ticket" => {
                let t = swarm.ticket();
                Reply::new(t.clone()).field("ticket", t)
            }
            "addrs" => {
                let a = swarm.addrs();
                Reply::new(a.join(" ")).field("addrs", a)
            }
            "id" => {
                let id = swarm.node_id();
                Reply::new(id.clone()).field("id", id)
            }
            "watch" => match args {
                "on" | "off" => {
                    *watch = args == "on";
                    Reply::new(format!("watch {args}")).field("watch", *watch)
                }
                _ => return Err("usage: watch on|off".to_string()),
            },
            other => {
                return Err(format!(
                    "unknown command {:?} (type help)",
                    truncated(other, ECHO_CHARS)
                ))
            }
        }))
    }
    .await;
    print_reply(r, json);
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

async fn run(cli: &Cli, bootstrap: &[String], mut watch: bool, json: bool) -> Result<(), Failure> {
    // Signal handlers first: a signal that arrives while the store opens stops the node
    // gracefully once it is up, instead of killing it.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let swarm = builder(cli)?
        .bootstrap(bootstrap.iter().cloned())
        .build()
        .await?;
    swarm.start().await?;
    if json {
        say!(
            "{}",
            serde_json::json!({ "ready": true, "id": swarm.node_id(), "ticket": swarm.ticket() })
        );
    } else {
        say!("id: {}", swarm.node_id());
        say!("ticket: {}", swarm.ticket());
        say!("ready (type help)");
    }

    let mut events = swarm.subscribe();
    let mut input = read_stdin();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            line = input.recv(), if stdin_open => match line {
                Some(Input::Line(l)) => {
                    if !execute(&swarm, &l, &mut watch, json).await {
                        break;
                    }
                }
                Some(Input::TooLong) => print_reply(
                    Err(format!("line longer than {MAX_LINE} bytes ignored (no command needs more)")),
                    json,
                ),
                // No more input (e.g. started in the background): keep serving.
                None => stdin_open = false,
            },
            Some(e) = events.recv() => {
                if watch {
                    print_event(&e, json);
                }
            }
        }
    }
    swarm.shutdown().await?;
    print_reply(
        Ok(Some(Reply::new("shut down").field("shut_down", true))),
        json,
    );
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
        Command::Run {
            bootstrap,
            watch,
            json,
        } => run(&cli, bootstrap, *watch, *json).await,
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
