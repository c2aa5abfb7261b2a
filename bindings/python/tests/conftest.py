"""Helpers for in-process multi-node tests: loopback only, no relays, no LAN discovery, short
election timings, temporary directories, and waiting on conditions with deadlines."""

import threading
import time

import pytest

import murmur

HEARTBEAT_MS = 100
LEADER_TIMEOUT_MS = 500
# Generous bound for anything to converge on a loaded 2-core machine.
DEADLINE_S = 30.0


def config(path, bootstrap=(), **overrides):
    """A test node's configuration: 127.0.0.1, relays and mDNS off, fast election."""
    options = dict(
        storage_path=str(path),
        swarm_name="murmur-python-tests",
        bootstrap=list(bootstrap),
        bind_addr="127.0.0.1:0",
        relay_mode=murmur.RelayMode.DISABLED(),
        local_discovery=False,
        heartbeat_interval_ms=HEARTBEAT_MS,
        leader_timeout_ms=LEADER_TIMEOUT_MS,
    )
    options.update(overrides)
    return murmur.SwarmConfig(**options)


def wait_until(what, cond, deadline_s=DEADLINE_S):
    """Polls `cond` until it returns true; fails the test with `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        if cond():
            return
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s}s waiting for: {what}")
        time.sleep(0.02)


def dump(node):
    return {k: node.get(k) for k in node.keys("")}


def converge(nodes):
    """Waits until all nodes hold identical maps, and returns that map."""
    wait_until(
        "replicas converge",
        lambda: all(dump(n) == dump(nodes[0]) for n in nodes[1:]),
    )
    return dump(nodes[0])


def agree_on_leader(nodes, expected):
    """Waits until every node reports `expected` as leader and exactly one says it leads."""

    def agreed():
        return all(n.leader_id() == expected for n in nodes) and sum(
            n.is_leader() for n in nodes
        ) == 1

    wait_until(f"all nodes agree the leader is {expected}", agreed)


class Recorder(murmur.EventListener):
    """An EventListener that records events; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events = []

    def on_event(self, event):
        with self._lock:
            self._events.append(event)

    def events(self):
        with self._lock:
            return list(self._events)

    def wait_for(self, what, pred):
        wait_until(what, lambda: any(pred(e) for e in self.events()))


class Nodes:
    """Opens started nodes and shuts down every one still open at the end of the test."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.opened = []
        self.count = 0

    def dir(self):
        self.count += 1
        return self.tmp_path / f"node{self.count}"

    def track(self, node):
        self.opened.append(node)
        return node

    def open(self, bootstrap=(), start=True, **overrides):
        node = self.track(murmur.Swarm(config(self.dir(), bootstrap, **overrides)))
        if start:
            node.start()
        return node

    def close_all(self):
        for node in self.opened:
            try:
                node.shutdown()
            except murmur.MurmurError.Closed:
                pass


@pytest.fixture
def nodes(tmp_path):
    n = Nodes(tmp_path)
    yield n
    n.close_all()
