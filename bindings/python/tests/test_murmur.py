"""The Python binding end to end: two or three nodes in one process on 127.0.0.1."""

import asyncio
import threading

import pytest

import murmur
from conftest import (
    Recorder,
    agree_on_leader,
    config,
    converge,
    wait_until,
)


def test_single_node_put_get_delete(nodes):
    a = nodes.open()
    assert a.get("missing") is None
    a.put("user:1", b"Alice")
    a.put("user:2", b"Bob")
    a.put("other", b"\x00\xff")
    assert a.get("user:1") == b"Alice"
    assert a.get("other") == b"\x00\xff"
    assert a.keys("user:") == ["user:1", "user:2"]
    assert a.keys("") == ["other", "user:1", "user:2"]
    assert a.len() == 3 and not a.is_empty()
    a.delete("user:1")
    a.delete("never-existed")  # deleting an absent key succeeds
    assert a.get("user:1") is None
    assert a.len() == 2
    a.compact()
    assert a.get("user:2") == b"Bob"
    assert len(a.node_id()) == 64
    assert a.ticket()


def test_values_survive_restart(nodes, tmp_path):
    path = tmp_path / "persistent"
    a = murmur.Swarm(config(path))
    node_id = a.node_id()
    a.put("k", b"v")  # writes work before start(): the replica is local
    a.shutdown()
    b = nodes.track(murmur.Swarm(config(path)))
    assert b.node_id() == node_id
    assert b.get("k") == b"v"


def test_replication_across_three_nodes(nodes):
    a = nodes.open()
    b = nodes.open(bootstrap=[a.ticket()])
    c = nodes.open(bootstrap=[a.ticket()])
    a.put("from-a", b"1")
    b.put("from-b", b"2")
    c.put("from-c", b"3")
    assert converge([a, b, c]) == {"from-a": b"1", "from-b": b"2", "from-c": b"3"}

    b.delete("from-a")
    c.put("from-c", b"33")
    assert converge([a, b, c]) == {"from-b": b"2", "from-c": b"33"}
    assert a.get("from-a") is None


def test_peers_are_reported(nodes):
    a = nodes.open()
    b = nodes.open(bootstrap=[a.ticket()])

    def connected(x, y):
        return any(p.id == y.node_id() and p.connected for p in x.peers())

    wait_until("a and b see each other connected", lambda: connected(a, b) and connected(b, a))
    peer = next(p for p in a.peers() if p.id == b.node_id())
    assert peer.path in (murmur.PathKind.DIRECT, murmur.PathKind.RELAYED)
    assert peer.rtt_ms is None or peer.rtt_ms >= 0

    # each side measures the other's clock: the same clock on loopback, so the offset is small
    def offset(x, y):
        return next((p.clock_offset_ms for p in x.peers() if p.id == y.node_id()), None)

    wait_until("clock offsets measured", lambda: offset(a, b) is not None and offset(b, a) is not None)
    assert abs(offset(a, b)) < 1000 and abs(offset(b, a)) < 1000


def test_events_reach_listeners(nodes):
    a = nodes.open()
    rec_a = Recorder()
    sub_a = a.subscribe(rec_a)
    b = nodes.open(bootstrap=[a.ticket()])
    rec_b = Recorder()
    sub_b = b.subscribe(rec_b)

    rec_a.wait_for("PeerUp on a", lambda e: isinstance(e, murmur.Event.PEER_UP) and e.peer == b.node_id())
    a.put("k", b"v")
    rec_b.wait_for(
        "a's put seen by b",
        lambda e: e == murmur.Event.PUT(key="k", value=b"v", origin=a.node_id()),
    )
    # the local write is an event too
    rec_a.wait_for("a's own put", lambda e: isinstance(e, murmur.Event.PUT) and e.key == "k")
    b.delete("k")
    rec_a.wait_for(
        "b's delete seen by a",
        lambda e: e == murmur.Event.DELETED(key="k", origin=b.node_id()),
    )
    leader = max(a.node_id(), b.node_id())
    for rec in (rec_a, rec_b):
        rec.wait_for(
            "LeaderChanged to the greatest id",
            lambda e: isinstance(e, murmur.Event.LEADER_CHANGED) and e.leader == leader and e.term > 0,
        )

    # cancel: no event reaches the listener afterwards
    assert not sub_b.is_cancelled()
    sub_b.cancel()
    assert sub_b.is_cancelled()
    seen = len(rec_b.events())
    a.put("after-cancel", b"x")
    wait_until("b has the value", lambda: b.get("after-cancel") == b"x")
    rec_a.wait_for("a's own event", lambda e: isinstance(e, murmur.Event.PUT) and e.key == "after-cancel")
    assert len(rec_b.events()) == seen

    # a peer leaving is reported
    b.shutdown()
    rec_a.wait_for("PeerDown on a", lambda e: isinstance(e, murmur.Event.PEER_DOWN) and e.peer == b.node_id())
    sub_a.cancel()


def test_listener_may_call_back_into_the_swarm(nodes):
    a = nodes.open()
    seen = []
    done = threading.Event()

    class Echo(murmur.EventListener):
        def on_event(self, event):
            if isinstance(event, murmur.Event.PUT) and event.key == "ping":
                a.put("pong", a.get("ping") + b"!")  # blocking calls from the callback
                seen.append(threading.current_thread().name)
                done.set()

    sub = a.subscribe(Echo())
    a.put("ping", b"hi")
    assert done.wait(30)
    assert a.get("pong") == b"hi!"
    sub.cancel()


def test_listener_exception_does_not_stop_delivery(nodes, capfd):
    a = nodes.open()
    rec = Recorder()

    class Failing(murmur.EventListener):
        def on_event(self, event):
            rec.on_event(event)
            raise RuntimeError("listener bug")

    sub = a.subscribe(Failing())
    a.put("one", b"1")
    a.put("two", b"2")
    rec.wait_for("second event after a failing callback", lambda e: isinstance(e, murmur.Event.PUT) and e.key == "two")
    sub.cancel()
    err = capfd.readouterr().err
    assert "an event listener raised an exception" in err and "listener bug" in err
    assert "panicked" not in err


def test_leader_election_and_failover(nodes):
    a = nodes.open()
    b = nodes.open(bootstrap=[a.ticket()])
    c = nodes.open(bootstrap=[a.ticket()])
    ordered = sorted([a, b, c], key=lambda n: n.node_id())
    highest, second = ordered[2], ordered[1]
    agree_on_leader([a, b, c], highest.node_id())
    assert highest.is_leader()
    term = highest.leader_term()
    assert term > 0

    highest.shutdown()
    rest = [n for n in (a, b, c) if n is not highest]
    agree_on_leader(rest, second.node_id())
    assert all(n.leader_term() > term for n in rest)


def test_errors_are_typed_with_messages(nodes, tmp_path):
    a = nodes.open(max_value_size=16)
    with pytest.raises(murmur.MurmurError.InvalidKey, match="invalid key"):
        a.put("", b"x")
    with pytest.raises(murmur.MurmurError.InvalidKey):
        a.get("nul\x00inside")
    with pytest.raises(murmur.MurmurError.ValueTooLarge, match="17 bytes exceeds the limit of 16"):
        a.put("big", b"x" * 17)
    # the data directory is locked while a is open
    with pytest.raises(murmur.MurmurError.Locked, match="in use"):
        murmur.Swarm(config(nodes.tmp_path / "node1"))
    with pytest.raises(murmur.MurmurError.InvalidTicket):
        murmur.Swarm(config(tmp_path / "t", bootstrap=["not a ticket"]))
    with pytest.raises(murmur.MurmurError.Config, match="leader_timeout"):
        murmur.Swarm(config(tmp_path / "c", heartbeat_interval_ms=500, leader_timeout_ms=500))
    with pytest.raises(murmur.MurmurError.Config, match="32 bytes"):
        murmur.Swarm(config(tmp_path / "k", swarm_name=None, swarm_key=b"short"))
    with pytest.raises(murmur.MurmurError.Config, match="bind_addr"):
        murmur.Swarm(config(tmp_path / "b", bind_addr="nowhere"))
    with pytest.raises(murmur.MurmurError.Config, match="max_clock_offset"):
        murmur.Swarm(config(tmp_path / "o", max_clock_offset_ms=0))
    # every error class is a MurmurError; a write refused for a skewed clock has its own
    # (the skew itself is tested in Rust: tests/replication.rs)
    assert issubclass(murmur.MurmurError.Closed, murmur.MurmurError)
    assert issubclass(murmur.MurmurError.ClockSkew, murmur.MurmurError)
    assert murmur.default_config("x").max_clock_offset_ms == 60000

    a.shutdown()
    for call in (lambda: a.put("k", b"v"), lambda: a.get("k"), lambda: a.delete("k"), a.shutdown):
        with pytest.raises(murmur.MurmurError.Closed, match="shut down"):
            call()


def test_swarm_key_separates_swarms(nodes):
    key = bytes(range(32))
    a = nodes.open(swarm_name=None, swarm_key=key)
    b = nodes.open(bootstrap=[a.ticket()], swarm_name=None, swarm_key=key)
    a.put("shared", b"yes")
    wait_until("b gets the value", lambda: b.get("shared") == b"yes")


def test_config_defaults_match_the_rust_builder(tmp_path):
    cfg = murmur.SwarmConfig(storage_path=str(tmp_path))
    assert cfg == murmur.default_config(str(tmp_path))
    assert cfg.heartbeat_interval_ms == 2000 and cfg.leader_timeout_ms == 5000
    assert cfg.local_discovery is True and cfg.max_value_size == 1 << 20 and cfg.max_peers == 64
    assert cfg.relay_mode is None and cfg.durability is None and cfg.bootstrap == []


def test_asyncio_api(tmp_path):
    async def main():
        a = await murmur.Swarm.open_async(config(tmp_path / "a", durability=murmur.Durability.PROCESS))
        await a.start_async()
        b = await murmur.Swarm.open_async(config(tmp_path / "b", bootstrap=[a.ticket()]))
        await b.start_async()
        # many writes in flight at once on the library runtime
        await asyncio.gather(*(a.put_async(f"k{i:02}", str(i).encode()) for i in range(20)))
        assert await a.get_async("k07") == b"7"
        assert len(await a.keys_async("k")) == 20

        async def replicated():
            while await b.get_async("k19") != b"19":
                await asyncio.sleep(0.02)

        await asyncio.wait_for(replicated(), 30)
        await b.delete_async("k19")

        async def deleted():
            while await a.get_async("k19") is not None:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(deleted(), 30)
        with pytest.raises(murmur.MurmurError.InvalidKey):
            await a.put_async("", b"x")
        await b.shutdown_async()
        await a.shutdown_async()
        with pytest.raises(murmur.MurmurError.Closed):
            await a.get_async("k00")

    asyncio.run(main())


def test_every_call_after_shutdown_raises_closed(nodes):
    a = nodes.open()
    node_id = a.node_id()
    sub = a.subscribe(Recorder())
    a.shutdown()
    blocking = {
        "start": a.start,
        "put": lambda: a.put("k", b"v"),
        "get": lambda: a.get("k"),
        "delete": lambda: a.delete("k"),
        "keys": lambda: a.keys(""),
        "len": a.len,
        "is_empty": a.is_empty,
        "is_leader": a.is_leader,
        "leader_id": a.leader_id,
        "leader_term": a.leader_term,
        "ticket": a.ticket,
        "peers": a.peers,
        "compact": a.compact,
        "subscribe": lambda: a.subscribe(Recorder()),
        "shutdown": a.shutdown,
    }
    asynchronous = {
        "start_async": a.start_async,
        "put_async": lambda: a.put_async("k", b"v"),
        "get_async": lambda: a.get_async("k"),
        "delete_async": lambda: a.delete_async("k"),
        "keys_async": lambda: a.keys_async(""),
        "shutdown_async": a.shutdown_async,
    }
    # every public method is covered: a new one must be added here
    methods = {m for m in dir(murmur.Swarm) if not m.startswith("_")} - {"open_async"}
    assert methods == set(blocking) | set(asynchronous) | {"node_id"}
    for name, call in blocking.items():
        with pytest.raises(murmur.MurmurError.Closed, match="shut down"):
            call()

    async def each_async():
        for name, call in asynchronous.items():
            with pytest.raises(murmur.MurmurError.Closed, match="shut down"):
                await call()

    asyncio.run(each_async())
    # node_id() cannot raise: it still returns the node's identity
    assert a.node_id() == node_id
    # a subscription made before shutdown has ended; cancelling it is harmless, twice too
    sub.cancel()
    sub.cancel()
    assert sub.is_cancelled()


def test_cancel_releases_the_listener(nodes):
    # The library holds no reference to a listener once cancel() returns: it is freed on the
    # cancelling thread, never later on a library thread (which, at interpreter exit, aborted
    # the process).
    import gc
    import weakref

    a = nodes.open()
    rec = Recorder()
    ref = weakref.ref(rec)
    sub = a.subscribe(rec)
    a.put("k", b"v")
    rec.wait_for("the put", lambda e: isinstance(e, murmur.Event.PUT))
    del rec
    sub.cancel()
    gc.collect()
    assert ref() is None
