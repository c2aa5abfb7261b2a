"""One way of ending a Python process that uses Murmur, run as a child process by
test_exit.py: `python exit_scenarios.py <scenario> <data-dir>`. Each scenario ends the
interpreter in an awkward order; the parent asserts a clean exit code (0) every time.

A library must not take the host process down whatever order the host tears things down in:
before the fix, a library thread freed or called a Python listener while the interpreter was
finalizing, and the process aborted (SIGABRT, exit code 134, `FATAL: exception not rethrown`).
"""

import os
import sys
import threading

import murmur


def config(path, bootstrap=()):
    return murmur.SwarmConfig(
        storage_path=path,
        swarm_name="murmur-python-exit-tests",
        bootstrap=list(bootstrap),
        bind_addr="127.0.0.1:0",
        relay_mode=murmur.RelayMode.DISABLED(),
        local_discovery=False,
        heartbeat_interval_ms=50,
        leader_timeout_ms=200,
    )


class Listener(murmur.EventListener):
    def __init__(self, action=None):
        self.action = action
        self.seen = threading.Event()

    def on_event(self, event):
        self.seen.set()
        if self.action:
            self.action(event)


def shutdown_then_subscribe_cancel(d):
    # The first reproduction of the issue: subscribe after shutdown, cancel, end the script.
    s = murmur.Swarm(config(d))
    s.start()
    s.shutdown()
    try:
        sub = s.subscribe(Listener())
        sub.cancel()
    except murmur.MurmurError.Closed:
        pass


def live_subscription_no_shutdown(d):
    # The second reproduction: a write in flight to a live listener, no shutdown.
    s = murmur.Swarm(config(d))
    s.start()
    s.subscribe(Listener())
    s.put("k", b"v")


def live_subscriptions_many_events(d):
    # Events keep arriving while the interpreter finalizes.
    s = murmur.Swarm(config(d))
    s.start()
    subs = [s.subscribe(Listener()) for _ in range(3)]
    for i in range(50):
        s.put(f"k{i}", b"v")
    del subs


def listener_raises(d):
    def boom(_event):
        raise RuntimeError("listener bug at exit")

    s = murmur.Swarm(config(d))
    s.start()
    s.subscribe(Listener(boom))
    for i in range(10):
        s.put(f"k{i}", b"v")


def shutdown_from_listener(d):
    s = murmur.Swarm(config(d))
    s.start()
    done = threading.Event()

    def stop(event):
        if isinstance(event, murmur.Event.PUT):
            try:
                s.shutdown()
            except murmur.MurmurError.Closed:
                pass
            done.set()

    s.subscribe(Listener(stop))
    s.put("k", b"v")
    if not done.wait(30):
        sys.exit("the listener did not run")


def exit_while_write_in_flight(d):
    # A daemon thread writes in a loop; the main thread ends the interpreter meanwhile.
    s = murmur.Swarm(config(d))
    s.start()
    listener = Listener()
    s.subscribe(listener)
    started = threading.Event()

    def writer():
        i = 0
        while True:
            try:
                s.put(f"k{i}", b"x" * 1000)
            except murmur.MurmurError.Closed:
                return
            i += 1
            started.set()

    threading.Thread(target=writer, daemon=True).start()
    if not started.wait(30) or not listener.seen.wait(30):
        sys.exit("the writer did not start")


def two_nodes_no_shutdown(d):
    # Replication and peer events in flight at exit.
    a = murmur.Swarm(config(os.path.join(d, "a")))
    a.start()
    b = murmur.Swarm(config(os.path.join(d, "b"), bootstrap=[a.ticket()]))
    b.start()
    a.subscribe(Listener())
    lb = Listener()
    b.subscribe(lb)
    a.put("k", b"v")
    if not lb.seen.wait(30):
        sys.exit("no event reached b")


def sys_exit_from_listener(d):
    # sys.exit in a listener only raises SystemExit on the library thread: it is reported and
    # delivery goes on; the script then ends normally with live subscriptions.
    s = murmur.Swarm(config(d))
    s.start()
    listener = Listener(lambda _e: sys.exit(3))
    s.subscribe(listener)
    s.put("k", b"v")
    if not listener.seen.wait(30):
        sys.exit("the listener did not run")


SCENARIOS = {
    f.__name__: f
    for f in (
        shutdown_then_subscribe_cancel,
        live_subscription_no_shutdown,
        live_subscriptions_many_events,
        listener_raises,
        shutdown_from_listener,
        exit_while_write_in_flight,
        two_nodes_no_shutdown,
        sys_exit_from_listener,
    )
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
