"""Storage faults reach listeners: a commit that fails is reported once, and so is the recovery."""

import sqlite3

import pytest

import murmur
from conftest import Recorder


def test_storage_failure_and_recovery_are_events(nodes):
    """A commit that fails (another program holds the database's write lock past the 5 s busy
    timeout) raises Storage, and listeners hear STORAGE_FAILED once, then STORAGE_RECOVERED at
    the next commit that works."""
    a = nodes.open()
    rec = Recorder()
    sub = a.subscribe(rec)
    db = nodes.tmp_path / f"node{nodes.count}" / "murmur.sqlite3"
    lock = sqlite3.connect(str(db), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(murmur.MurmurError.Storage, match="locked"):
            a.put("k", b"v")
        rec.wait_for("STORAGE_FAILED", lambda e: isinstance(e, murmur.Event.STORAGE_FAILED))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    a.put("k", b"v2")
    rec.wait_for("STORAGE_RECOVERED", lambda e: isinstance(e, murmur.Event.STORAGE_RECOVERED))
    kinds = (murmur.Event.STORAGE_FAILED, murmur.Event.STORAGE_RECOVERED)
    storage = [e for e in rec.events() if isinstance(e, kinds)]
    assert len(storage) == 2 and "locked" in storage[0].error, storage
    assert a.get("k") == b"v2"
    sub.cancel()
