//! The `murmur` command-line node, driven as real processes through stdin and stdout.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

fn murmur(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_murmur"));
    c.args([
        "--data",
        dir.to_str().unwrap(),
        "--swarm-name",
        "cli-test",
        "--bind",
        "127.0.0.1:0",
        "--relay",
        "disabled",
        "--no-mdns",
        "--heartbeat-ms",
        "100",
        "--leader-timeout-ms",
        "500",
    ]);
    c
}

impl Node {
    fn run(dir: &std::path::Path, bootstrap: Option<&str>) -> Node {
        let mut c = murmur(dir);
        c.arg("run");
        if let Some(t) = bootstrap {
            c.args(["--bootstrap", t]);
        }
        Node::spawn(c)
    }

    /// Starts `c` (a `murmur ... run` command) with its stdin and stdout piped.
    fn spawn(mut c: Command) -> Node {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn murmur");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Node {
            child,
            stdin,
            lines,
        }
    }

    /// Reads lines until one starts with `prefix`.
    fn expect_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(_) => panic!("no line starting with {prefix:?} within {DEADLINE:?}"),
            }
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Sends `cmd` repeatedly until its one-line answer satisfies `ok`.
    fn poll(&mut self, cmd: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.send(cmd);
            let l = self
                .lines
                .recv_timeout(DEADLINE)
                .expect("an answer to every command");
            if ok(&l) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{cmd:?} never satisfied; last: {l}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next line of output.
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no output within {DEADLINE:?}"))
    }

    fn quit(mut self) {
        self.send("quit");
        self.expect_line("shut down");
        let status = self.child.wait().unwrap();
        assert!(status.success());
    }
}

#[test]
fn two_cli_nodes_replicate_elect_and_report_peers() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::run(da.path(), None);
    let ticket = a.expect_line("ticket: ")["ticket: ".len()..].to_string();
    a.expect_line("ready");
    let mut b = Node::run(db.path(), Some(&ticket));
    b.expect_line("ready");
    let mut a = a;

    a.send("put greeting hello world");
    assert_eq!(a.expect_line("ok"), "ok");
    let got = b.poll("get greeting", |l| l != "(none)");
    assert_eq!(got, "hello world");

    let peers = b.poll("peers", |l| {
        l.contains("connected") && !l.contains("disconnected")
    });
    assert!(peers.contains("direct"), "{peers}");
    // The peer's clock offset, once measured: `clock +0ms` on one machine.
    let peers = b.poll("peers", |l| {
        l.contains(" clock ") && !l.ends_with("clock -")
    });
    let offset: i64 = peers
        .rsplit("clock ")
        .next()
        .unwrap()
        .trim_end_matches("ms")
        .parse()
        .unwrap();
    assert!(offset.abs() < 1000, "{peers}");

    // Both report the same leader (the greater ID).
    let la = a.poll("leader", |l| !l.starts_with("leader none"));
    let lb = b.poll("leader", |l| l.split(' ').nth(1) == la.split(' ').nth(1));
    assert_ne!(
        la.ends_with("me true"),
        lb.ends_with("me true"),
        "exactly one leads"
    );

    b.send("del greeting");
    b.expect_line("ok");
    a.poll("get greeting", |l| l == "(none)");
    b.send("bogus");
    assert!(b.expect_line("error:").contains("unknown command"));
    a.quit();
    b.quit();

    // One-shot commands on a stopped node's directory.
    let out = murmur(db.path()).args(["put", "k", "v"]).output().unwrap();
    assert!(out.status.success());
    let out = murmur(db.path()).args(["get", "k"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    let out = murmur(db.path()).args(["get", ""]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid key"));
}

#[test]
fn a_second_process_on_a_running_nodes_directory_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let a = Node::run(d.path(), None);
    a.expect_line("ready");
    let out = murmur(d.path()).args(["get", "k"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another Murmur instance"), "{err}");
    // Deleting the lock file does not let a second process in: the directory itself is locked.
    std::fs::remove_file(d.path().join("murmur.lock")).unwrap();
    let out = murmur(d.path()).args(["get", "k"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another Murmur instance"), "{err}");
    a.quit();
}

/// kill -9 while the node cuts epochs under a stream of writes: every restart opens cleanly,
/// every acknowledged write is there (or a later one of the same key), and the epoch never
/// goes back. The kill lands at a random point of the stream, compaction requests included,
/// and the policy's own cuts (thresholds far below the defaults) run throughout.
#[test]
fn kill_9_during_compactions_loses_no_acknowledged_write() {
    const KEYS: usize = 50;
    const PER_ROUND: usize = 400;
    let d = tempfile::tempdir().unwrap();
    let spawn = || {
        let mut c = murmur(d.path());
        c.args([
            "--compaction-min-kib",
            "8",
            "--compaction-interval-ms",
            "100",
            "run",
        ]);
        let n = Node::spawn(c);
        n.expect_line("ready");
        n
    };
    // key -> sequence number of its last acknowledged write
    let mut acked: Vec<Option<usize>> = vec![None; KEYS];
    let mut seq = 0usize;
    let mut last_epoch = 0u64;
    for round in 0..6 {
        let mut n = spawn();
        // The node must lead itself before a `compact` cuts an epoch.
        n.poll("leader", |l| l.ends_with("me true"));
        let e = n.poll("epoch", |l| l.starts_with("epoch "));
        let epoch: u64 = e.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            epoch >= last_epoch,
            "epoch went back: {epoch} < {last_epoch}"
        );
        last_epoch = epoch;
        for (k, a) in acked.iter().enumerate() {
            let Some(s) = *a else { continue };
            n.send(&format!("get key-{k}"));
            let got = n.lines.recv_timeout(DEADLINE).expect("an answer");
            let got_seq: usize = got
                .strip_prefix("v-")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("round {round}: key-{k} holds {got:?}"));
            assert!(
                got_seq >= s,
                "round {round}: key-{k} lost write {s}, has {got_seq}"
            );
        }
        // Stream writes with compaction requests among them, then kill at a random point.
        let mut sent = Vec::new(); // what each command's "ok" acknowledges
        for i in 0..PER_ROUND {
            if i % 50 == 25 {
                n.send("compact");
                sent.push(None);
            }
            let k = (seq + i) % KEYS;
            n.send(&format!("put key-{k} v-{}", seq + i));
            sent.push(Some((k, seq + i)));
        }
        seq += PER_ROUND;
        let stop_after = rand::random_range(50..sent.len() - 20);
        let mut oks = 0;
        while oks < stop_after {
            let l = n.lines.recv_timeout(DEADLINE).expect("acks keep coming");
            if l == "ok" {
                oks += 1;
            }
        }
        n.child.kill().unwrap();
        n.child.wait().unwrap();
        // Acks printed before the kill but not read yet count too: read to end of output.
        oks += n.lines.iter().filter(|l| l == "ok").count();
        for (k, s) in sent[..oks].iter().flatten() {
            acked[*k] = Some(*s);
        }
    }
    let mut n = spawn();
    let e = n.poll("epoch", |l| l.starts_with("epoch "));
    let epoch: u64 = e.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(epoch >= 6, "the node cut only {epoch} epochs in 6 rounds");
    let count = n.poll("count", |_| true);
    assert_eq!(count, KEYS.to_string());
    n.quit();
}

/// How long a node may take to exit once told to.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

fn send_signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (no reuse).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Waits for `child` to exit; kills it and fails if it is still running after `limit`.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `c` with no input to completion; kills it and fails if it runs longer than `limit`.
fn output_within(mut c: Command, limit: Duration) -> Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn murmur");
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("murmur's output"),
        Err(_) => {
            // SAFETY: the child is not reaped yet (its waiter is still waiting).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("murmur still running after {limit:?}");
        }
    }
}

/// SIGTERM or Ctrl-C (SIGINT) stops a node at once although its stdin is still open (as with
/// `sleep 60 | murmur run`): exit status 0, and what it acknowledged is on disk.
#[test]
fn a_signal_stops_a_node_promptly_while_its_stdin_is_open() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let d = tempfile::tempdir().unwrap();
        let mut a = Node::run(d.path(), None);
        a.expect_line("ready");
        a.send("put k durable");
        assert_eq!(a.expect_line("ok"), "ok");
        send_signal(&a.child, sig);
        a.expect_line("shut down");
        // `a.stdin` stays open until the end of this iteration.
        let status = wait_exit(&mut a.child, EXIT_DEADLINE, name);
        assert!(status.success(), "{name}: {status:?}");
        let out = murmur(d.path()).args(["get", "k"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "durable");
    }
}

/// A SIGTERM that arrives while the node is still opening its store (before `ready`) shuts it
/// down gracefully instead of killing it.
#[test]
fn a_signal_before_ready_shuts_the_node_down_gracefully() {
    let d = tempfile::tempdir().unwrap();
    // The node creates its data directory early in startup, after its signal handlers.
    let dir = d.path().join("node");
    let mut c = murmur(&dir);
    c.arg("run");
    let mut a = Node::spawn(c);
    let deadline = Instant::now() + DEADLINE;
    while !dir.exists() {
        assert!(
            Instant::now() < deadline,
            "no data directory within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    send_signal(&a.child, libc::SIGTERM);
    let status = wait_exit(&mut a.child, DEADLINE, "SIGTERM before ready");
    assert!(status.success(), "killed instead of shut down: {status:?}");
    a.expect_line("shut down");
}

/// When the reader of a node's stdout goes away (`murmur run --watch | head`), the node keeps
/// serving: events it can no longer print do not stop it, its writes still reach its peers, and
/// SIGTERM still shuts it down cleanly.
#[test]
fn a_node_whose_stdout_is_closed_keeps_serving() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = murmur(da.path());
    c.args(["run", "--watch"]);
    let mut a = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn murmur");
    let mut a_stdin = a.stdin.take().unwrap();
    let a_stdout = a.stdout.take().unwrap();
    // Read A's output up to `ready`, then close the read end of its stdout.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ticket = None;
        let mut r = BufReader::new(a_stdout);
        for l in (&mut r).lines().map_while(Result::ok) {
            if let Some(t) = l.strip_prefix("ticket: ") {
                ticket = Some(t.to_string());
            }
            if l.starts_with("ready") {
                break;
            }
        }
        drop(r);
        let _ = tx.send(ticket);
    });
    let ticket = rx
        .recv_timeout(DEADLINE)
        .expect("A ready")
        .expect("A's ticket");

    // B joining and writing makes A print events (peer up, puts) to the closed pipe.
    let mut b = Node::run(db.path(), Some(&ticket));
    b.expect_line("ready");
    for i in 0..5 {
        b.send(&format!("put b{i} from b"));
        assert_eq!(b.expect_line("ok"), "ok");
    }
    b.poll("peers", |l| l.contains(" connected "));
    // A still takes commands and its writes still reach B.
    writeln!(a_stdin, "put from-a still serving").unwrap();
    a_stdin.flush().unwrap();
    b.poll("get from-a", |l| l == "still serving");
    assert!(a.try_wait().unwrap().is_none(), "A exited");

    send_signal(&a, libc::SIGTERM);
    let status = wait_exit(&mut a, EXIT_DEADLINE, "A after SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(a_stdin);
    b.quit();
    let out = murmur(da.path()).args(["get", "from-a"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still serving");
}

/// Bad input lines are reported and later commands still run: invalid UTF-8, unknown commands
/// (echoed cut short), over-long lines, `watch` with a wrong argument. `put` takes its value
/// verbatim.
#[test]
fn stdin_lines_are_taken_verbatim_and_bad_ones_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Node::run(d.path(), None);
    a.expect_line("ready");

    a.stdin.write_all(b"put bad \xff\xfe value\n").unwrap();
    let e = a.next_line();
    assert!(e.starts_with("error:") && e.contains("UTF-8"), "{e}");
    a.send("put after-bad-line yes");
    assert_eq!(a.next_line(), "ok");
    a.send("get after-bad-line");
    assert_eq!(a.next_line(), "yes");

    // The value: everything after the one space that follows the key.
    a.send("put spaced  two leading, two trailing  ");
    assert_eq!(a.next_line(), "ok");
    a.send("get spaced");
    assert_eq!(a.next_line(), " two leading, two trailing  ");
    a.stdin.write_all(b"put crlf v \r\n").unwrap();
    assert_eq!(a.next_line(), "ok");
    a.send("get crlf");
    assert_eq!(a.next_line(), "v ");

    // Unknown commands are echoed cut to 80 characters (on a character boundary).
    for junk in ["x".repeat(100_000), "é".repeat(1000)] {
        a.send(&junk);
        let e = a.next_line();
        assert!(e.contains("unknown command") && e.contains('…'), "{e:.200}");
        assert!(e.len() < 300, "the error repeats {} bytes", e.len());
    }
    // A line longer than any command is refused without the node holding on to it.
    let long = format!("put big {}\n", "v".repeat(9 << 20));
    a.stdin.write_all(long.as_bytes()).unwrap();
    let e = a.next_line();
    assert!(e.starts_with("error: line longer than"), "{e}");

    a.send("watch bogus");
    let e = a.next_line();
    assert!(e.starts_with("error:") && e.contains("on|off"), "{e}");
    a.send("watch on");
    assert_eq!(a.next_line(), "watch on");
    a.send("watch off");
    assert_eq!(a.next_line(), "watch off");
    a.send("count");
    assert_eq!(a.next_line(), "3");
    a.quit();
}

/// One-shot errors say what is wrong: a missing key is "not found" (status 3), zero
/// compaction thresholds are refused, `--max-value-size` and `--max-peers` reach the builder.
#[test]
fn one_shot_commands_report_specific_errors_and_take_the_limits() {
    let d = tempfile::tempdir().unwrap();
    let out = murmur(d.path()).args(["get", "missing"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("key \"missing\" not found"), "{err}");
    assert!(!err.contains("invalid configuration"), "{err}");

    for flag in [
        "--compaction-ratio",
        "--compaction-min-kib",
        "--compaction-interval-ms",
    ] {
        let out = murmur(d.path()).args([flag, "0", "id"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} 0 accepted");
        assert!(err.contains(flag), "{err}");
    }

    let out = murmur(d.path())
        .args(["--max-value-size", "10", "put", "k", "01234567890"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an 11-byte value accepted");
    assert!(err.contains("exceeds the limit of 10 bytes"), "{err}");
    let out = murmur(d.path())
        .args(["--max-value-size", "10", "put", "k", "0123456789"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = murmur(d.path())
        .args(["--max-peers", "0", "id"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_peers"), "{err}");
}

/// A bootstrap ticket with bytes after the address (here `murmur` + 100 000 × `a`, which once
/// joined an all-zero node ID forever) stops the node at start with a short, clear error.
#[test]
fn a_ticket_with_trailing_bytes_is_refused_at_start() {
    let d = tempfile::tempdir().unwrap();
    let mut c = murmur(d.path());
    c.args(["run", "-b", &format!("murmur{}", "a".repeat(100_000))]);
    let out = output_within(c, DEADLINE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err:.300}");
    assert!(err.contains("invalid ticket"), "{err:.300}");
    assert!(err.contains("bytes follow the address"), "{err:.300}");
    assert!(err.len() < 1000, "the error repeats {} bytes", err.len());
}

/// With `watch on`, a commit that fails (another program holds the database's write lock past
/// the busy timeout) prints `event storage-failed <reason>` once, and the next commit that works
/// prints `event storage-recovered`.
#[test]
fn storage_failures_and_recovery_are_printed_as_events() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Node::run(d.path(), None);
    a.expect_line("ready");
    a.send("watch on");
    assert_eq!(a.expect_line("watch"), "watch on");
    let lock = rusqlite::Connection::open(d.path().join("murmur.sqlite3")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    a.send("put k v");
    let failed = a.expect_line("event storage-failed");
    assert!(failed.contains("locked"), "{failed}");
    lock.execute_batch("ROLLBACK").unwrap();
    a.send("put k v2");
    a.expect_line("event storage-recovered");
    a.poll("get k", |l| l == "v2");
    a.quit();
}
/// The text replies of the stdin protocol, in the formats `murmur --help` documents.
#[test]
fn stdin_replies_have_the_documented_formats() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Node::run(d.path(), None);
    let id = a.expect_line("id: ")["id: ".len()..].to_string();
    a.expect_line("ready");
    a.send("put k1 hello world");
    assert_eq!(a.next_line(), "ok");
    a.send("get k1");
    assert_eq!(a.next_line(), "hello world");
    a.send("get missing");
    assert_eq!(a.next_line(), "(none)");
    a.send("put k2 x");
    assert_eq!(a.next_line(), "ok");
    a.send("del k2");
    assert_eq!(a.next_line(), "ok");
    a.send("count");
    assert_eq!(a.next_line(), "1");
    a.send("list");
    assert_eq!(a.next_line(), "k1 = hello world");
    a.send("digest");
    let digest = a.next_line();
    let (count, hash) = digest.split_once(' ').expect("digest is `<count> <hash>`");
    assert_eq!(count, "1");
    assert!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );
    // A lone node elects itself.
    let leader = a.poll("leader", |l| l.ends_with("me true"));
    let term = leader
        .strip_prefix(&format!("leader {id} term "))
        .and_then(|rest| rest.strip_suffix(" me true"))
        .and_then(|t| t.parse::<u64>().ok());
    assert!(term.is_some_and(|t| t >= 1), "{leader}");
    a.send("id");
    assert_eq!(a.next_line(), id);
    a.send("frobnicate");
    assert!(a.next_line().starts_with("error: unknown command"));
    a.quit();
}

/// `--json`: the banner, every reply, errors and events are one JSON object per line.
#[test]
fn json_mode_prints_one_object_per_reply() {
    let d = tempfile::tempdir().unwrap();
    let mut c = murmur(d.path());
    c.args(["run", "--json"]);
    let mut a = Node::spawn(c);
    let json = |l: String| -> serde_json::Value {
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}"))
    };
    let ready = json(a.next_line());
    assert_eq!(ready["ready"], true);
    let id = ready["id"].as_str().unwrap().to_string();
    assert!(ready["ticket"].is_string());

    a.send("put k v v");
    assert_eq!(json(a.next_line()), serde_json::json!({ "ok": true }));
    a.send("get k");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "value": "v v" })
    );
    a.send("get missing");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "value": null })
    );
    a.send("list");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "entries": [{ "key": "k", "value": "v v" }] })
    );
    a.send("list nothing-matches");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "entries": [] })
    );
    a.send("count");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "count": 1 })
    );
    a.send("digest");
    let d = json(a.next_line());
    assert_eq!(d["count"], 1);
    assert_eq!(d["hash"].as_str().unwrap().len(), 16);
    let leader = a.poll("leader", |l| json(l.to_string())["me"] == true);
    let leader = json(leader);
    assert!(leader["term"].as_u64().is_some_and(|t| t >= 1), "{leader}");
    assert_eq!(
        leader,
        serde_json::json!({ "ok": true, "leader": id, "term": leader["term"], "me": true })
    );
    a.send("peers");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "peers": [] })
    );
    a.send("id");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "id": id })
    );
    a.send("put");
    let e = json(a.next_line());
    assert_eq!(e["ok"], false);
    assert!(e["error"].as_str().unwrap().contains("usage"), "{e}");
    a.stdin.write_all(b"get \xff\n").unwrap();
    assert_eq!(json(a.next_line())["ok"], false);

    a.send("watch on");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "watch": true })
    );
    a.send("put w 1");
    // The reply and the event, in either order, each one object.
    let mut got = [json(a.next_line()), json(a.next_line())];
    got.sort_by_key(|v| v.get("event").is_some());
    assert_eq!(got[0], serde_json::json!({ "ok": true }));
    assert_eq!(
        got[1],
        serde_json::json!({ "event": "put", "key": "w", "value": "1", "origin": id })
    );
    a.send("watch off");
    assert_eq!(json(a.next_line())["watch"], false);

    a.send("quit");
    assert_eq!(
        json(a.next_line()),
        serde_json::json!({ "ok": true, "shut_down": true })
    );
    assert!(a.child.wait().unwrap().success());
}

/// `murmur --help` and `murmur run --help` document the protocol and the exit codes.
#[test]
fn help_documents_the_stdin_protocol() {
    let d = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = murmur(d.path()).args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "STDIN PROTOCOL",
            "(none)",
            "leader <node-id|none> term <n> me <true|false>",
            "<count> <hash>",
            "error: <message>",
            "--json",
            "{\"ok\":false,\"error\":\"<message>\"}",
            "EXIT CODES",
            "3  get: the key holds no value",
        ] {
            assert!(help.contains(needle), "{args:?}: no {needle:?} in:\n{help}");
        }
    }
}
