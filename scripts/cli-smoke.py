#!/usr/bin/env python3
"""Two-node smoke test of a `murmur` CLI binary on 127.0.0.1, relays and mDNS off.

Starts node A, joins node B to it with A's ticket, puts a key on each and waits (with a
deadline) until the other reads it, then stops both with `quit` and checks they exit with 0.
Usage: python3 scripts/cli-smoke.py path/to/murmur        Exit code 0 if it passed.
"""

import queue
import subprocess
import sys
import tempfile
import threading
import time

DEADLINE = 30.0


class Node:
    def __init__(self, binary, datadir, bootstrap=None):
        args = [binary, "--data", datadir, "--swarm-name", "cli-smoke", "--bind", "127.0.0.1:0",
                "--relay", "disabled", "--no-mdns", "run"]
        if bootstrap:
            args += ["-b", bootstrap]
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ticket = self.expect("ticket: ")[len("ticket: "):]
        self.expect("ready")

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def expect(self, prefix):
        end = time.time() + DEADLINE
        while True:
            line = self.q.get(timeout=max(0.01, end - time.time()))
            if line is None:
                raise RuntimeError("node exited")
            if line.startswith(prefix):
                return line

    def ask(self, cmd):
        while not self.q.empty():
            self.q.get_nowait()
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        line = self.q.get(timeout=10)
        if line is None:
            raise RuntimeError("node exited")
        return line

    def quit(self):
        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        return self.p.wait(timeout=15)


def wait_for(desc, fn):
    end = time.time() + DEADLINE
    while not fn():
        if time.time() > end:
            raise RuntimeError(f"timed out after {DEADLINE:.0f}s waiting for {desc}")
        time.sleep(0.1)


def put(node, kv):
    got = node.ask(f"put {kv}")
    if got != "ok":
        raise RuntimeError(f"put {kv}: {got!r}")


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="murmur-smoke-") as tmp:
        a = b = None
        try:
            a = Node(binary, f"{tmp}/a")
            b = Node(binary, f"{tmp}/b", a.ticket)
            start = time.time()
            put(a, "smoke-a from-a")
            wait_for("B to read A's put", lambda: b.ask("get smoke-a") == "from-a")
            put(b, "smoke-b from-b")
            wait_for("A to read B's put", lambda: a.ask("get smoke-b") == "from-b")
            took = time.time() - start
            codes = (a.quit(), b.quit())
            if codes != (0, 0):
                raise RuntimeError(f"exit codes {codes}, expected 0 and 0")
            print(f"PASS two-node CLI smoke test ({binary}): a put on each node read on the "
                  f"other within {took:.1f}s; both exited with 0")
            return 0
        except Exception as e:
            print(f"FAIL two-node CLI smoke test ({binary}): {e!r}")
            return 1
        finally:
            for n in (a, b):
                if n and n.p.poll() is None:
                    n.p.kill()
                    n.p.wait()


if __name__ == "__main__":
    sys.exit(main())
