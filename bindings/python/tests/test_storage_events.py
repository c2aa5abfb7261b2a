"""Storage faults reach listeners: a commit that fails is reported once, and so is the recovery."""

import subprocess
import sys

import pytest

import murmur
from conftest import Recorder

# Holds the write lock of the database given as argv[1] until its stdin closes. It must be
# another process: POSIX file locks do not conflict within one process, and Python's sqlite3
# is another SQLite library than the one inside murmur.
HOLD_LOCK = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
c.execute("ROLLBACK")
"""


def test_storage_failure_and_recovery_are_events(nodes):
    """A commit that fails (another program holds the database's write lock past the 5 s busy
    timeout, as a backup tool or an sqlite3 shell does) raises Storage, and listeners hear
    STORAGE_FAILED once, then STORAGE_RECOVERED at the next commit that works."""
    a = nodes.open()
    rec = Recorder()
    sub = a.subscribe(rec)
    db = nodes.tmp_path / f"node{nodes.count}" / "murmur.sqlite3"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(murmur.MurmurError.Storage, match="locked"):
            a.put("k", b"v")
        rec.wait_for("STORAGE_FAILED", lambda e: isinstance(e, murmur.Event.STORAGE_FAILED))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    a.put("k", b"v2")
    rec.wait_for("STORAGE_RECOVERED", lambda e: isinstance(e, murmur.Event.STORAGE_RECOVERED))
    kinds = (murmur.Event.STORAGE_FAILED, murmur.Event.STORAGE_RECOVERED)
    storage = [e for e in rec.events() if isinstance(e, kinds)]
    assert len(storage) == 2 and "locked" in storage[0].error, storage
    assert a.get("k") == b"v2"
    sub.cancel()
