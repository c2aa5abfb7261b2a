#!/usr/bin/env python3
"""A userspace Ethernet switch with netem-like impairment, for kernels without `sch_netem`.

Creates TAP devices with the given names, prints `ready`, then forwards Ethernet frames between
them (learning MAC addresses, flooding broadcasts) and delays each frame by `--delay-ms`
(+ up to `--jitter-ms`) and drops it with probability `--loss`: every link through this switch
behaves like `tc qdisc add ... netem delay D loss P`. The caller moves each TAP into its
network namespace (`ip link set NAME netns NS`) and configures it; the switch keeps the file
descriptors. Runs until SIGTERM or SIGINT.

Usage: linkemu.py --delay-ms 100 --loss 0.05 tap1 tap2 ...
"""

import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
BROADCAST_BIT = 0x01


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("taps", nargs="+")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    fds = [open_tap(n) for n in a.taps]
    macs = {}  # MAC -> fd
    pending = []  # heap of (due, seq, fd, frame)
    seq = 0
    stats = {"forwarded": 0, "dropped": 0}
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    while running:
        now = time.monotonic()
        timeout = max(0.0, pending[0][0] - now) if pending else 0.5
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(frame) < 14:
                    continue
                dst, src = frame[0:6], frame[6:12]
                macs[src] = fd
                if dst[0] & BROADCAST_BIT or dst not in macs:
                    outs = [o for o in fds if o != fd]
                else:
                    outs = [macs[dst]]
                for o in outs:
                    if rng.random() < a.loss:
                        stats["dropped"] += 1
                        continue
                    due = now + (a.delay_ms + rng.random() * a.jitter_ms) / 1000.0
                    seq += 1
                    heapq.heappush(pending, (due, seq, o, frame))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, o, frame = heapq.heappop(pending)
            try:
                os.write(o, frame)
                stats["forwarded"] += 1
            except OSError:
                pass  # interface down or gone: the frame is lost, like on a wire
    print(f"forwarded {stats['forwarded']} dropped {stats['dropped']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
