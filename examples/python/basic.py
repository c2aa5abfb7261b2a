"""Two Murmur nodes in one process, from Python: replication, events, leader, asyncio.

Runs offline (127.0.0.1, relays and LAN discovery off). After `pip install target/package/murmur-*.whl`
(built by `bash scripts/package.sh`) or `pip install ./bindings/python`:
    python examples/python/basic.py
"""

import asyncio
import tempfile
import threading
import time

import murmur


def config(path, bootstrap=()):
    return murmur.SwarmConfig(
        storage_path=path,
        bootstrap=list(bootstrap),
        bind_addr="127.0.0.1:0",
        relay_mode=murmur.RelayMode.DISABLED(),
        local_discovery=False,
        heartbeat_interval_ms=100,
        leader_timeout_ms=500,
    )


class Printer(murmur.EventListener):
    """Prints every event; called on a library thread."""

    def __init__(self, name):
        self.name = name
        self.replicated = threading.Event()

    def on_event(self, event):
        print(f"  [{self.name}] {event}")
        if isinstance(event, murmur.Event.PUT) and event.key == "user:123":
            self.replicated.set()


def wait_until(what, cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.02)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        a = murmur.Swarm(config(f"{tmp}/a"))
        a.start()
        b = murmur.Swarm(config(f"{tmp}/b", bootstrap=[a.ticket()]))
        b.start()
        printer = Printer("b")
        subscription = b.subscribe(printer)

        a.put("user:123", b"Alice")
        assert printer.replicated.wait(30), "the value did not reach b"
        print("b reads user:123 =", b.get("user:123"))

        wait_until("a leader", lambda: a.leader_id() is not None and a.leader_id() == b.leader_id())
        print("leader:", a.leader_id(), "(a leads)" if a.is_leader() else "(b leads)")

        try:
            a.put("", b"x")
        except murmur.MurmurError.InvalidKey as e:
            print("refused:", e)

        async def with_asyncio():
            await b.put_async("greeting", b"hello from asyncio")
            return await b.get_async("greeting")

        print("asyncio:", asyncio.run(with_asyncio()))
        subscription.cancel()
        b.shutdown()
        a.shutdown()
        print("done")


if __name__ == "__main__":
    main()
