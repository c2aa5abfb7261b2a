#!/usr/bin/env python3
"""Multi-host reliability suite: real `murmur` processes in network namespaces.

Creates its own namespaces (prefix `mmt-`): a switch namespace with bridges, five node hosts on
one bridge (10.213.0.1-5), a relay host (a local iroh relay on 10.213.0.100) and a sixth host
that can reach only the relay. The zero-configuration scenario adds two multicast-capable links
(10.213.3.0/24 and 10.213.4.0/24) joined by a router that forwards unicast but not multicast.
No traffic leaves these namespaces. Every check waits on a condition with a deadline.
Namespaces and processes are removed at the end, also on failure.

Usage (root): python3 tests/netns/suite.py [--bin target/debug/murmur] [--only zero-config]
              [--mdns-off]
Prints one line per check and `N passed, M failed` at the end; exit code 1 if any failed.
`--mdns-off` tests the test: it starts the zero-configuration nodes with `--no-mdns`, and the
zero-configuration checks must then FAIL (discovery is what they test).
"""

import argparse
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

NS = "mmt"
NET = "10.213.0"
RNET = "10.213.1"
ZNET, WNET = "10.213.3", "10.213.4"  # the zero-configuration scenario's two links
RELAY_IP = f"{NET}.100"
RELAY_PORT = 3340
PORT = 7000
HB_MS, LT_MS = 200, 1000
DEADLINE = 45.0  # seconds, generous for a loaded 2-core machine
# Every node compacts automatically at much lower thresholds than the defaults, so that
# compaction runs during every scenario, not only the one written for it.
COMPACTION_ARGS = ["--compaction-min-kib", "16", "--compaction-interval-ms", "1000"]


def run(*args, check=True):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def ns(name):
    return f"{NS}-{name}"


class CheckFailed(Exception):
    pass


def wait_for(desc, fn, timeout=DEADLINE):
    """Polls fn until it returns something truthy; returns (value, seconds taken)."""
    start = time.time()
    last = None
    while True:
        try:
            last = fn()
        except CheckFailed:
            raise
        except Exception as e:  # a node not answering yet is not a failure yet
            last = e
        if last and not isinstance(last, Exception):
            return last, time.time() - start
        if time.time() - start > timeout:
            raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {desc} (last: {last!r})")
        time.sleep(0.1)


class Topology:
    def __init__(self):
        self.namespaces = []
        self.cleanup_stale()
        self.add_ns("sw")
        for br in ("bra", "brb", "brr", "brz", "brw"):
            run("ip", "-n", ns("sw"), "link", "add", br, "type", "bridge")
            run("ip", "-n", ns("sw"), "link", "set", br, "up")
        self.hosts = {}

    @staticmethod
    def cleanup_stale():
        for line in run("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(NS + "-"):
                run("ip", "netns", "del", name, check=False)
        shutil.rmtree(f"/etc/netns/{NS}-n6", ignore_errors=True)

    def add_ns(self, name):
        run("ip", "netns", "add", ns(name))
        self.namespaces.append(ns(name))
        run("ip", "-n", ns(name), "link", "set", "lo", "up")
        # No routing between interfaces: only what a test wires up is reachable.
        run("ip", "netns", "exec", ns(name), "sh", "-c",
            "echo 0 > /proc/sys/net/ipv4/ip_forward")

    def plug(self, name, host_if, sw_if, addr, bridge):
        """A veth pair from namespace `name` (`host_if`, with `addr`/24) to `bridge` (`sw_if`)."""
        run("ip", "link", "add", host_if, "netns", ns(name), "type", "veth",
            "peer", "name", sw_if, "netns", ns("sw"))
        run("ip", "-n", ns(name), "addr", "add", f"{addr}/24", "dev", host_if)
        run("ip", "-n", ns(name), "link", "set", host_if, "up")
        run("ip", "-n", ns("sw"), "link", "set", sw_if, "master", bridge)
        run("ip", "-n", ns("sw"), "link", "set", sw_if, "up")

    def add_host(self, name, addr, bridge, extra_routes=(), via=(), multicast=False):
        """A host on `bridge`. `extra_routes` go out of its interface, `via` is (net, gateway)
        pairs; `multicast` sets the link's multicast flag and routes 224.0.0.0/4 on it, as a
        LAN's default route would (a namespace has no default route, so without it every
        multicast send fails)."""
        self.add_ns(name)
        host_if, sw_if = f"v-{name}", f"s-{name}"
        self.plug(name, host_if, sw_if, addr, bridge)
        for r in extra_routes:
            run("ip", "-n", ns(name), "route", "add", r, "dev", host_if)
        for net, gw in via:
            run("ip", "-n", ns(name), "route", "add", net, "via", gw)
        if multicast:
            run("ip", "-n", ns(name), "link", "set", host_if, "multicast", "on")
            run("ip", "-n", ns("sw"), "link", "set", sw_if, "multicast", "on")
            run("ip", "-n", ns(name), "route", "add", "224.0.0.0/4", "dev", host_if)
        self.hosts[name] = addr

    def add_router(self, name, legs):
        """A router between bridges: `legs` is (bridge, address) pairs. It forwards unicast
        between them; it does not forward multicast (no multicast routing daemon, as on most
        routers between two LANs), so mDNS stays on each link."""
        self.add_ns(name)
        for i, (bridge, addr) in enumerate(legs):
            self.plug(name, f"v-{name}{i}", f"s-{name}{i}", addr, bridge)
        run("ip", "netns", "exec", ns(name), "sh", "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward")

    def add_relay_host(self):
        """The relay host: on the main bridge as RELAY_IP, and on the relay-only bridge, where it
        answers for the same address (so every node uses one relay URL)."""
        self.add_host("relay", RELAY_IP, "bra")
        run("ip", "link", "add", "v-relay2", "netns", ns("relay"), "type", "veth",
            "peer", "name", "s-relay2", "netns", ns("sw"))
        run("ip", "-n", ns("relay"), "addr", "add", f"{RNET}.100/24", "dev", "v-relay2")
        run("ip", "-n", ns("relay"), "addr", "add", f"{RELAY_IP}/32", "dev", "v-relay2")
        run("ip", "-n", ns("relay"), "link", "set", "v-relay2", "up")
        run("ip", "-n", ns("sw"), "link", "set", "s-relay2", "master", "brr")
        run("ip", "-n", ns("sw"), "link", "set", "s-relay2", "up")

    def move(self, name, bridge):
        run("ip", "-n", ns("sw"), "link", "set", f"s-{name}", "master", bridge)

    def destroy(self):
        for n in reversed(self.namespaces):
            run("ip", "netns", "del", n, check=False)
        self.namespaces = []


class Node:
    def __init__(self, bin_path, name, addr, datadir, logdir, bootstrap=None, relay=True,
                 opts=None):
        """`opts` replaces the suite's usual options (swarm name, fixed address, relay, no
        mDNS, fast election, eager compaction) by exactly these, after `--data`."""
        self.name, self.addr, self.datadir = name, addr, datadir
        self.bin, self.logdir, self.bootstrap = bin_path, logdir, bootstrap
        self.relay = f"http://{RELAY_IP}:{RELAY_PORT}" if relay else "disabled"
        self.opts = opts if opts is not None else [
            "--swarm-name", "netns-suite", "--bind", f"{self.addr}:{PORT}",
            "--relay", self.relay, "--no-mdns",
            "--heartbeat-ms", str(HB_MS), "--leader-timeout-ms", str(LT_MS),
            *COMPACTION_ARGS]
        self.start()

    def start(self):
        args = ["ip", "netns", "exec", ns(self.name), self.bin,
                "--data", self.datadir, *self.opts, "run"]
        if self.bootstrap:
            args += ["--bootstrap", self.bootstrap]
        self.log = open(os.path.join(self.logdir, f"{self.name}.log"), "a")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "murmur=info"))
        # `ip netns exec` execs the command: the pid is murmur's, so kill -9 hits the node.
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, bufsize=1, env=env)
        self.q = queue.Queue()
        threading.Thread(target=self._read, args=(self.p, self.q), daemon=True).start()
        self.id = self.expect("id: ")[4:]
        self.expect("ready")

    @staticmethod
    def _read(p, q):
        for line in p.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    def expect(self, prefix, timeout=DEADLINE):
        end = time.time() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, end - time.time()))
            except queue.Empty:
                raise CheckFailed(f"{self.name}: no line starting with {prefix!r}")
            if line is None:
                raise CheckFailed(f"{self.name}: process exited")
            if line.startswith(prefix):
                return line

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def ask(self, cmd, timeout=10):
        while not self.q.empty():
            self.q.get_nowait()
        self.send(cmd)
        line = self.q.get(timeout=timeout)
        if line is None:
            raise CheckFailed(f"{self.name}: process exited")
        return line

    def leader(self):
        # "leader <id|none> term <n> me <bool>"
        parts = self.ask("leader").split()
        return parts[1], int(parts[3]), parts[5] == "true"

    def kill9(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def drain_oks(self):
        """Counts the "ok" lines already printed but not read (after kill9: acknowledged
        writes whose acks were not read yet)."""
        n = 0
        while True:
            try:
                line = self.q.get_nowait()
            except queue.Empty:
                return n
            if line == "ok":
                n += 1

    def quit(self):
        if self.p.poll() is None:
            try:
                self.send("quit")
                self.p.wait(timeout=15)
            except Exception:
                self.p.kill()
                self.p.wait()


def agree(nodes, expected):
    leaders = [n.leader() for n in nodes]
    return all(l[0] == expected for l in leaders) and sum(l[2] for l in leaders) == 1


def same_digest(nodes):
    ds = {n.ask("digest") for n in nodes}
    return ds.pop() if len(ds) == 1 else None


def epoch(node):
    """(n, term, leader) of the node's history epoch."""
    # "epoch <n> term <term> leader <hex>"
    parts = node.ask("epoch").split()
    return int(parts[1]), int(parts[3]), parts[5]


def same_epoch(nodes):
    es = {epoch(n) for n in nodes}
    return es.pop() if len(es) == 1 else None


def disk_bytes(datadir):
    return sum(os.path.getsize(os.path.join(datadir, f)) for f in os.listdir(datadir)
               if f.startswith("murmur.sqlite3"))


def never(desc, fn, window):
    """Polls fn for `window` seconds; fails at once if it ever returns something truthy (an
    absence can only be observed over a time; callers size the window from a positive control
    that shows the same mechanism working meanwhile)."""
    end = time.time() + window
    while time.time() < end:
        got = fn()
        if got:
            raise CheckFailed(f"{desc}: {got!r}")
        time.sleep(0.25)


class Suite:
    def __init__(self, bin_path, relay_bin, only=None, mdns_off=False):
        self.bin, self.relay_bin = bin_path, relay_bin
        self.only, self.mdns_off = only, mdns_off
        self.finished = False
        self.zc_found = None  # seconds the first zero-configuration pair took to connect
        self.passed, self.failed = 0, 0
        self.tmp = tempfile.mkdtemp(prefix="murmur-netns-")
        self.topo = None
        self.nodes = {}
        self.relay = None
        self.emu = None

    def check(self, name, fn):
        t = time.time()
        try:
            detail = fn()
            self.passed += 1
            print(f"PASS {name} ({time.time() - t:.1f}s){': ' + detail if detail else ''}", flush=True)
        except Exception as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            for n in self.nodes.values():
                n.log.flush()
                tail = open(n.log.name).read().splitlines()[-5:]
                for l in tail:
                    print(f"    [{n.name}] {l}")

    def setup(self):
        self.topo = Topology()
        for i in range(1, 6):
            self.topo.add_host(f"n{i}", f"{NET}.{i}", "bra")
        self.topo.add_relay_host()
        # n6 reaches only the relay host.
        self.topo.add_host("n6", f"{RNET}.6", "brr", extra_routes=[f"{RELAY_IP}/32"])
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", ns("relay"), self.relay_bin, f"0.0.0.0:{RELAY_PORT}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.relay.stdout.readline()
        if not line.startswith("relay:"):
            raise RuntimeError("relay server did not start")

    def start_node(self, name, bootstrap=None):
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        self.nodes[name] = Node(self.bin, name, self.topo.hosts[name], d, self.tmp, bootstrap)
        return self.nodes[name]

    def five(self):
        return [self.nodes[f"n{i}"] for i in range(1, 6)]

    def start_zc(self, name, opts, bootstrap=None):
        """A zero-configuration node: only a data directory, relays disabled (this machine has
        no internet) and `opts`; default swarm, any address, mDNS on (unless --mdns-off)."""
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        opts = ["--relay", "disabled", *(["--no-mdns"] if self.mdns_off else []), *opts]
        node = Node(self.bin, name, self.topo.hosts[name], d, self.tmp, bootstrap, opts=opts)
        self.nodes[name] = node
        return node

    def connected_direct(self, a, b):
        """True once a lists b as connected over a direct path."""
        return any(l.split()[:3] == [b.id, "connected", "direct"] for l in self.peers(a))

    def strangers_seen(self, nodes, strangers):
        """The (node, stranger) pairs in which a node lists a stranger among its peers at all
        (connected, or known and disconnected)."""
        ids = {s.id: s.name for s in strangers}
        return [(n.name, ids[l.split()[0]]) for n in nodes for l in self.peers(n)
                if l.split()[0] in ids]

    # --- scenarios -------------------------------------------------------------------------

    def startup(self):
        first = self.start_node("n1")
        for i in range(2, 6):
            self.start_node(f"n{i}", first.ask("ticket"))
        top = max(n.id for n in self.five())
        _, took = wait_for("5 nodes agree on the greatest ID", lambda: agree(self.five(), top))
        return f"leader agreed after {took:.1f}s"

    def partition_and_heal(self):
        a_side = [self.nodes["n1"], self.nodes["n2"]]
        b_side = [self.nodes[f"n{i}"] for i in (3, 4, 5)]
        for n in ("n3", "n4", "n5"):
            self.topo.move(n, "brb")
        wait_for("side {1,2} elects its greatest ID",
                 lambda: agree(a_side, max(n.id for n in a_side)))
        wait_for("side {3,4,5} elects its greatest ID",
                 lambda: agree(b_side, max(n.id for n in b_side)))
        for i in range(20):
            assert a_side[i % 2].ask(f"put shared-{i % 5} a-{i}") == "ok"
            assert a_side[i % 2].ask(f"put a-only-{i} x") == "ok"
            assert b_side[i % 3].ask(f"put shared-{i % 5} b-{i}") == "ok"
            assert b_side[i % 3].ask(f"put b-only-{i} y") == "ok"
        # Hold the partition until the connections across it are gone (QUIC idle timeout), so
        # healing needs real reconnection, not just retransmission.
        b_ids = {n.id for n in b_side}
        wait_for("connections across the partition to close", lambda: not any(
            l.split()[0] in b_ids and " connected " in l for l in self.peers(a_side[0])))
        heal_at = time.time()
        for n in ("n3", "n4", "n5"):
            self.topo.move(n, "bra")
        top = max(n.id for n in self.five())
        digest, _ = wait_for("all 5 converge to identical maps", lambda: same_digest(self.five()))
        took_maps = time.time() - heal_at
        _, _ = wait_for("one leader, the greatest ID", lambda: agree(self.five(), top))
        took_leader = time.time() - heal_at
        count = int(digest.split()[0])
        if count != 45:
            raise CheckFailed(f"expected 45 keys after the merge, found {count}")
        return f"maps equal {took_maps:.1f}s and leader agreed {took_leader:.1f}s after heal"

    def kill_leader(self):
        five = self.five()
        top = max(n.id for n in five)
        leader = next(n for n in five if n.id == top)
        for i in range(50):
            assert leader.ask(f"put leader-{i} v{i}") == "ok"
        killed_at = time.time()
        leader.kill9()
        rest = [n for n in five if n is not leader]
        new_top = max(n.id for n in rest)
        _, took = wait_for("survivors agree on a new leader", lambda: agree(rest, new_top))
        leader.start()
        for i in range(50):
            if leader.ask(f"get leader-{i}") != f"v{i}":
                raise CheckFailed(f"restarted leader lost acknowledged write leader-{i}")
        wait_for("restarted node rejoins and converges", lambda: same_digest(five))
        wait_for("it leads again (greatest ID)", lambda: agree(five, top))
        return f"new leader {took:.1f}s after kill -9 (leader timeout {LT_MS} ms)"

    def kill_writers(self):
        five = self.five()
        top = max(n.id for n in five)
        writers = [n for n in five if n.id != top][:2]
        acked = {}
        for w in writers:
            while not w.q.empty():
                w.q.get_nowait()
            for j in range(400):
                w.send(f"put {w.name}-stream-{j:04d} payload-{j}")
        # Kill each writer in the middle of its stream, after a random number of acks.
        for w in writers:
            stop_after = random.randint(50, 250)
            n = 0
            while n < stop_after:
                line = w.q.get(timeout=DEADLINE)
                if line == "ok":
                    n += 1
                elif line is None:
                    raise CheckFailed(f"{w.name} exited early")
            w.kill9()
            # Acks read before the kill; later ones may have been printed but not read:
            # count them too, they were acknowledged.
            acked[w.name] = n + w.drain_oks()
        for w in writers:
            w.start()
            for j in range(acked[w.name]):
                v = w.ask(f"get {w.name}-stream-{j:04d}")
                if v != f"payload-{j}":
                    raise CheckFailed(f"{w.name} lost acknowledged put #{j}: got {v!r}")
        wait_for("all converge after the writers restart", lambda: same_digest(five))
        for n in five:
            for w in writers:
                last = acked[w.name] - 1
                if n.ask(f"get {w.name}-stream-{last:04d}") != f"payload-{last}":
                    raise CheckFailed(f"{n.name} misses {w.name}'s last acknowledged put")
        return ", ".join(f"{k}: {v} acked, 0 lost" for k, v in acked.items())

    def compaction_partition_crash(self):
        """Compaction while the swarm is split in two and a writer is killed mid-stream.

        Each side of a 2|3 partition overwrites its own hot keys hundreds of times, so each
        side's leader cuts its own epochs (automatically, and on requests sent through a
        follower). On the 3-node side a writer is killed with kill -9 while it streams writes
        and epochs are being cut around it. After the heal every replica must end in the same
        epoch with identical maps, hold every acknowledged write (a hot key holds the last write
        of one side or the other), and store a small multiple of the live data."""
        five = self.five()
        a_side = [self.nodes["n1"], self.nodes["n2"]]
        b_side = [self.nodes[f"n{i}"] for i in (3, 4, 5)]
        start_epochs = {n.name: epoch(n) for n in five}
        for n in ("n3", "n4", "n5"):
            self.topo.move(n, "brb")
        a_top, b_top = max(n.id for n in a_side), max(n.id for n in b_side)
        wait_for("side {1,2} elects its greatest ID", lambda: agree(a_side, a_top))
        wait_for("side {3,4,5} elects its greatest ID", lambda: agree(b_side, b_top))
        a_writer = next(n for n in a_side if n.id != a_top)  # a follower: it also asks
        b_leader = next(n for n in b_side if n.id == b_top)
        b_writer = next(n for n in b_side if n.id != b_top)
        rounds, hot = 600, 10
        value = "v" * 4000  # large values, so that the garbage is plain to see on disk
        last = {}  # (side, key) -> last acknowledged value

        # Side a: sequential overwrites through a follower, with compaction requests it
        # forwards to its leader.
        for j in range(rounds):
            key = f"hot-{j % hot}"
            v = f"a{j:05d}{value}"
            if a_writer.ask(f"put {key} {v}") != "ok":
                raise CheckFailed(f"{a_writer.name} refused put #{j}")
            last[("a", key)] = {v}
            if j % 150 == 149:
                if a_writer.ask("compact") != "ok":
                    raise CheckFailed(f"{a_writer.name}: compact failed")

        # Side b: a streamed burst from the writer; compaction requests to the leader while it
        # runs; kill -9 of the writer after a random number of acknowledgements.
        while not b_writer.q.empty():
            b_writer.q.get_nowait()
        for j in range(rounds):
            b_writer.send(f"put hot-{j % hot} b{j:05d}{value}")
        stop_after = random.randint(rounds // 3, rounds - 50)
        acked = 0
        while acked < stop_after:
            line = b_writer.q.get(timeout=DEADLINE)
            if line is None:
                raise CheckFailed(f"{b_writer.name} exited early")
            if line == "ok":
                acked += 1
                if acked % 60 == 0:
                    b_leader.send("compact")
        b_writer.kill9()
        acked += b_writer.drain_oks()
        # A put may have committed after its "ok" was lost with the process, so a later write
        # of the same key is also fine; an earlier one would be a lost acknowledged write.
        for j in range(rounds):
            key = f"hot-{j % hot}"
            if j >= acked - hot:
                last.setdefault(("b", key), set()).add(f"b{j:05d}{value}")
        b_writer.start()
        for k in range(hot):
            key = f"hot-{k}"
            if ("b", key) in last and b_writer.ask(f"get {key}") not in last[("b", key)]:
                raise CheckFailed(f"{b_writer.name} lost its last acknowledged write of {key}")

        a_epoch, _ = wait_for("side {1,2} shares one new epoch", lambda: (
            lambda e: e if e and e[:2] != start_epochs["n1"][:2] else None)(same_epoch(a_side)))
        b_epoch, _ = wait_for("side {3,4,5} shares one new epoch", lambda: (
            lambda e: e if e and e[:2] != start_epochs["n3"][:2] else None)(same_epoch(b_side)))
        if a_epoch == b_epoch:
            raise CheckFailed(f"both sides report the same epoch while apart: {a_epoch}")

        heal_at = time.time()
        for n in ("n3", "n4", "n5"):
            self.topo.move(n, "bra")
        wait_for("all 5 converge to identical maps", lambda: same_digest(five))
        final, _ = wait_for("all 5 share one epoch", lambda: same_epoch(five))
        took = time.time() - heal_at
        # Let the maps settle once more after the epochs did (the epoch switch carries writes).
        wait_for("all 5 still identical in the shared epoch", lambda: same_digest(five))
        for k in range(hot):
            key = f"hot-{k}"
            allowed = last[("a", key)] | last.get(("b", key), set())
            got = {n.ask(f"get {key}") for n in five}
            if len(got) != 1 or not got <= allowed:
                raise CheckFailed(f"{key}: replicas hold {got}, expected one of {allowed}")

        # One more cut now that the swarm is whole, then reopen every replica from disk: the
        # maps survive and every store is a small multiple of the live data.
        leader = next(n for n in five if n.id == max(m.id for m in five))
        wait_for("the greatest ID leads again", lambda: agree(five, leader.id))
        if leader.ask("compact") != "ok":
            raise CheckFailed("compact on the leader failed")
        wait_for("all 5 adopt the leader's new epoch", lambda: (
            lambda e: e if e and e[:2] > final[:2] else None)(same_epoch(five)))
        digest, _ = wait_for("maps identical in it", lambda: same_digest(five))
        for n in five:
            n.quit()
        sizes = {n.name: disk_bytes(n.datadir) for n in five}
        for n in five:
            n.start()
        top = max(n.id for n in five)
        wait_for("after restarting all 5, maps are unchanged", lambda: same_digest(five) == digest)
        wait_for("and the greatest ID leads", lambda: agree(five, top))
        written = 2 * rounds * (len(value) + 6)
        live = hot * (len(value) + 6)
        worst = max(sizes.values())
        # Without compaction every overwritten value would still be stored (> `written`).
        if worst > written // 4:
            raise CheckFailed(f"a store is {worst} bytes after compaction "
                              f"({written} bytes overwritten, {live} live): {sizes}")
        def show(e):
            return f"#{e[0]} of term {e[1]}"
        return (f"sides cut epochs {show(a_epoch)} and {show(b_epoch)}; {b_writer.name} killed "
                f"after {acked} acks; after heal one epoch {show(final)} and equal maps in "
                f"{took:.1f}s; "
                f"stores {min(sizes.values()) // 1024}-{worst // 1024} KiB after "
                f"{written // 1024} KiB of overwrites")

    def relay_only_join(self):
        n1 = self.nodes["n1"]
        wait_for("n1 is connected to its home relay", lambda: "http://" in n1.ask("addrs"))
        n6 = self.start_node("n6", n1.ask("ticket"))
        everyone = self.five() + [n6]
        wait_for("n6 syncs through the relay", lambda: same_digest(everyone))
        peers = [l for l in self.peers(n6) if l.split()[0] == n1.id]
        if not peers or "relayed" not in peers[0]:
            raise CheckFailed(f"n6's path to n1 is not relayed: {peers}")
        assert n6.ask("put from-n6 hi") == "ok"
        wait_for("n1 gets n6's write", lambda: n1.ask("get from-n6") == "hi")
        return "n6 reached the swarm only through the relay"

    def impaired_network(self):
        """Five fresh nodes whose every link has 100 ms latency and 5% loss. The kernel here has
        no netem, so the links go through a userspace switch (linkemu.py) that delays and drops
        Ethernet frames the same way."""
        names = [f"i{i}" for i in range(1, 6)]
        taps = [f"tap-{n}" for n in names]
        here = os.path.dirname(os.path.abspath(__file__))
        self.emu = subprocess.Popen(
            [sys.executable, os.path.join(here, "linkemu.py"), "--delay-ms", "100",
             "--jitter-ms", "10", "--loss", "0.05", *taps],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self.emu.stdout.readline().strip() != "ready":
            raise CheckFailed("link emulator did not start")
        for i, (n, tap) in enumerate(zip(names, taps), start=1):
            self.topo.add_ns(n)
            run("ip", "link", "set", tap, "netns", ns(n))
            run("ip", "-n", ns(n), "addr", "add", f"10.213.2.{i}/24", "dev", tap)
            run("ip", "-n", ns(n), "link", "set", tap, "up")
            self.topo.hosts[n] = f"10.213.2.{i}"
        nodes = []
        for n in names:
            d = os.path.join(self.tmp, n)
            os.makedirs(d, exist_ok=True)
            boot = nodes[0].ask("ticket") if nodes else None
            node = Node(self.bin, n, self.topo.hosts[n], d, self.tmp, boot, relay=False)
            self.nodes[n] = node
            nodes.append(node)
        top = max(n.id for n in nodes)
        _, took_leader = wait_for("impaired swarm agrees on the greatest ID",
                                  lambda: agree(nodes, top), timeout=90)
        for i in range(30):
            assert nodes[i % 5].ask(f"put lossy-{i % 7} v{i}") == "ok"
        start = time.time()
        wait_for("impaired swarm converges", lambda: same_digest(nodes), timeout=90)
        took_sync = time.time() - start
        leader = next(n for n in nodes if n.id == top)
        leader.kill9()
        rest = [n for n in nodes if n is not leader]
        _, took_failover = wait_for("impaired swarm re-elects after kill -9",
                                    lambda: agree(rest, max(n.id for n in rest)), timeout=90)
        return (f"leader agreed {took_leader:.1f}s after start, maps equal {took_sync:.1f}s "
                f"after the last write, failover {took_failover:.1f}s (100 ms latency, 5% loss)")

    # --- zero configuration: mDNS on a link, no bootstrap ----------------------------------

    def setup_zero_config(self):
        """Link Z (brz) and link W (brw), each with multicast, joined by a router `zr` that
        forwards unicast only. z1, z2 (default swarm) and z3, z4 (another key) on Z; z5, z6
        (default swarm) on W."""
        t = self.topo
        t.add_router("zr", [("brz", f"{ZNET}.254"), ("brw", f"{WNET}.254")])
        for i in range(1, 5):
            t.add_host(f"z{i}", f"{ZNET}.{i}", "brz", via=[(f"{WNET}.0/24", f"{ZNET}.254")],
                       multicast=True)
        for i in (5, 6):
            t.add_host(f"z{i}", f"{WNET}.{i}", "brw", via=[(f"{ZNET}.0/24", f"{WNET}.254")],
                       multicast=True)

    def zc_window(self):
        # How long an absence is watched: twice what discovery took where it works, at least 5 s.
        return max(5.0, 2 * (self.zc_found or DEADLINE / 2))

    def zero_config_one_link(self):
        """Two CLI nodes with no swarm name, no address, no bootstrap, relays disabled and mDNS
        on (the default) on one link: they find each other, connect directly and replicate."""
        z1 = self.start_zc("z1", [])
        z2 = self.start_zc("z2", [])
        _, took = wait_for("z1 and z2 to find each other on the link and connect directly",
                           lambda: self.connected_direct(z1, z2) and self.connected_direct(z2, z1))
        self.zc_found = took
        if z1.ask("put zc-hello from-z1") != "ok":
            raise CheckFailed("z1 refused a put")
        wait_for("z2 to read z1's put", lambda: z2.ask("get zc-hello") == "from-z1")
        if z2.ask("put zc-reply from-z2") != "ok":
            raise CheckFailed("z2 refused a put")
        wait_for("z1 to read z2's put", lambda: z1.ask("get zc-reply") == "from-z2")
        return f"connected {took:.1f}s after start, a put on each read on the other"

    def zero_config_other_key(self):
        """Two nodes with another swarm key on the same link find each other (so mDNS works for
        them there) but neither connects to the default-swarm pair, and no data crosses."""
        key = os.urandom(32).hex()
        z3 = self.start_zc("z3", ["--swarm-key", key])
        z4 = self.start_zc("z4", ["--swarm-key", key])
        wait_for("z3 and z4 (another key) to find each other on the same link",
                 lambda: self.connected_direct(z3, z4) and self.connected_direct(z4, z3))
        if z3.ask("put other-secret s3") != "ok":
            raise CheckFailed("z3 refused a put")
        wait_for("z4 to read z3's put", lambda: z4.ask("get other-secret") == "s3")
        ours, theirs = [self.nodes["z1"], self.nodes["z2"]], [z3, z4]
        window = self.zc_window()
        never("a node lists a peer of the other swarm", lambda: (
            self.strangers_seen(ours, theirs) + self.strangers_seen(theirs, ours)), window)
        for n in ours:
            if n.ask("get other-secret") != "(none)":
                raise CheckFailed(f"{n.name} holds the other swarm's key")
        for n in theirs:
            if n.ask("get zc-hello") != "(none)" or n.ask("count") != "1":
                raise CheckFailed(f"{n.name} holds data of the default swarm")
        return f"z3/z4 found each other, not z1/z2, over {window:.1f}s; no data crossed"

    def zero_config_two_links(self):
        """z5, z6 (default swarm) on link W find each other by mDNS but not z1, z2 on link Z: the
        router between the links forwards unicast only. With z1's ticket, z5 joins all."""
        z5 = self.start_zc("z5", [])
        z6 = self.start_zc("z6", [])
        wait_for("z5 and z6 to find each other on link W",
                 lambda: self.connected_direct(z5, z6) and self.connected_direct(z6, z5))
        z = [self.nodes["z1"], self.nodes["z2"]]
        window = self.zc_window()
        never("a node finds one on the other link without a ticket", lambda: (
            self.strangers_seen(z, [z5, z6]) + self.strangers_seen([z5, z6], z)), window)
        if z5.ask("get zc-hello") != "(none)":
            raise CheckFailed("z5 holds z1's put without having met it")
        # With a ticket (a restart with -b): unicast crosses the router.
        z5.quit()
        z5.bootstrap = z[0].ask("ticket")
        z5.start()
        wait_for("z5 to connect to z1 through the router",
                 lambda: self.connected_direct(z5, z[0]))
        wait_for("z6 to read z1's put", lambda: z6.ask("get zc-hello") == "from-z1")
        if z5.ask("put zc-from-w from-z5") != "ok":
            raise CheckFailed("z5 refused a put")
        wait_for("z2 to read z5's put", lambda: z[1].ask("get zc-from-w") == "from-z5")
        return f"not found across links over {window:.1f}s; joined and replicated with a ticket"

    def stop_zero_config(self):
        for i in range(1, 7):
            n = self.nodes.pop(f"z{i}", None)
            if n:
                n.quit()

    def peers(self, node):
        while not node.q.empty():
            node.q.get_nowait()
        node.send("peers")
        node.send("id")  # a marker: `peers` prints one line per peer
        out = []
        while True:
            line = node.q.get(timeout=10)
            if line == node.id:
                return out
            out.append(line)

    def run(self):
        try:
            self.setup()
            self.setup_zero_config()
            self.check("zero configuration: 2 nodes on one link find each other (mDNS) and "
                       "replicate", self.zero_config_one_link)
            self.check("zero configuration: another swarm key on the same link is not "
                       "connected and learns nothing", self.zero_config_other_key)
            self.check("zero configuration: no discovery across links without shared "
                       "multicast; a ticket joins them", self.zero_config_two_links)
            self.stop_zero_config()
            if self.only == "zero-config":
                return self.finish()
            self.check("startup: 5 nodes elect the greatest ID", self.startup)
            self.check("partition 2|3, writes on both sides, heal", self.partition_and_heal)
            self.check("kill -9 of the leader, restart, rejoin", self.kill_leader)
            self.check("kill -9 of writers mid-stream: zero acknowledged writes lost",
                       self.kill_writers)
            self.check("compaction under a 2|3 partition and kill -9 of a writer",
                       self.compaction_partition_crash)
            self.check("a node joining through a relay only syncs", self.relay_only_join)
            self.check("100 ms latency and 5% loss on all links: converges and elects",
                       self.impaired_network)
        finally:
            self.teardown()
        return self.finish()

    def finish(self):
        if self.finished:
            return self.failed == 0
        self.finished = True
        print(f"{self.passed} passed, {self.failed} failed")
        return self.failed == 0

    def teardown(self):
        for n in self.nodes.values():
            n.quit()
        for p in (self.relay, self.emu):
            if p:
                p.kill()
                p.wait()
        if self.topo:
            self.topo.destroy()
        if os.environ.get("MURMUR_NETNS_KEEP"):
            print(f"kept the nodes' data and logs in {self.tmp} (MURMUR_NETNS_KEEP)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(root, "target/debug/murmur"))
    ap.add_argument("--relay-bin", default=os.path.join(root, "target/debug/examples/local_relay"))
    ap.add_argument("--only", choices=["zero-config"],
                    help="run only the zero-configuration scenario")
    ap.add_argument("--mdns-off", action="store_true",
                    help="start the zero-configuration nodes with --no-mdns: a check of the "
                         "suite itself, its zero-configuration checks must then fail")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("the netns suite needs root (it creates network namespaces)")
        return 1
    suite = Suite(os.path.abspath(a.bin), os.path.abspath(a.relay_bin), a.only, a.mdns_off)

    def on_signal(sig, _frame):
        suite.teardown()
        sys.exit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return 0 if suite.run() else 1


if __name__ == "__main__":
    sys.exit(main())
