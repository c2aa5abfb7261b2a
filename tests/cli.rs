//! The `murmur` command-line node, driven as real processes through stdin and stdout.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
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
