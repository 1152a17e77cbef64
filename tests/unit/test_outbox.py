"""The disk outbox on its own: order, delete-on-ack, bounds, TTL, reopen, a kill -9 mid-stream, corrupt files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop.edge.outbox import Outbox, default_state_dir


def msgs(start: int, n: int, size: int = 10) -> list[tuple[str, bytes]]:
    return [(f"results/dev-{i % 3}/m", f"{i:0{size}d}".encode()) for i in range(start, start + n)]


def payloads(rows) -> list[int]:
    return [int(r.payload) for r in rows]


@pytest.mark.parametrize("fsync", ["full", "batch", "normal"])
def test_rows_come_out_in_append_order_and_leave_only_when_deleted(tmp_path, fsync):
    box = Outbox(tmp_path / "o.sqlite", fsync=fsync)
    box.append(msgs(0, 5))
    box.append(msgs(5, 5))
    first = box.next(4)
    assert payloads(first) == [0, 1, 2, 3]
    assert payloads(box.next(100)) == [4, 5, 6, 7, 8, 9]  # each row is handed out once per process
    assert box.next(100) == []
    box.delete(first[:2])
    assert (box.depth, box.nbytes) == (8, sum(len(t) + len(p) for t, p in msgs(2, 8)))
    box.close()
    again = Outbox(tmp_path / "o.sqlite", fsync=fsync)  # a new process: everything not deleted, in order
    assert again.replayed_at_open == 8
    assert payloads(again.next(100)) == list(range(2, 10))


def test_sync_covers_every_append_before_it(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", fsync="batch")
    box.append(msgs(0, 2))
    box.append(msgs(2, 2))
    assert (box.append_seq, box.synced_seq) == (2, 0)  # committed, not yet known to be on disk
    assert box.sync() == 2 and box.synced_seq == 2 and box.syncs == 1
    assert box.sync() == 2 and box.syncs == 1  # nothing new: no fsync
    full = Outbox(tmp_path / "f.sqlite", fsync="full")
    full.append(msgs(0, 1))
    assert full.synced_seq == full.append_seq == 1  # full: synced by the append itself


def test_ids_are_never_reused_after_the_table_empties(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.append(msgs(0, 3))
    box.delete(box.next(10))
    box.close()
    box = Outbox(tmp_path / "o.sqlite")
    box.append(msgs(3, 2))
    rows = box.next(10)
    assert payloads(rows) == [3, 4] and min(r.id for r in rows) > 3


def test_over_the_count_bound_the_oldest_unsent_are_dropped_and_counted(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_messages=10)
    box.append(msgs(0, 4))
    in_flight = box.next(2)  # 0 and 1 are with the MQTT client: never dropped under it
    box.append(msgs(4, 10))
    assert box.depth == 10 and box.dropped_overflow == 4
    box.delete(in_flight)
    assert payloads(box.next(100)) == list(range(6, 14))
    assert box.counters()["outbox_dropped_overflow"] == 4


def test_over_the_byte_bound_the_oldest_unsent_are_dropped(tmp_path):
    one = sum(len(t) + len(p) for t, p in msgs(0, 1, size=100))
    box = Outbox(tmp_path / "o.sqlite", max_bytes=5 * one)
    box.append(msgs(0, 8, size=100))
    assert box.depth == 5 and box.nbytes <= 5 * one and box.dropped_overflow == 3
    assert payloads(box.next(100)) == [3, 4, 5, 6, 7]


def test_messages_past_their_ttl_expire_unsent(tmp_path):
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite", ttl_s=60, clock=lambda: now[0])
    box.append(msgs(0, 3))
    now[0] += 30
    box.append(msgs(3, 2))
    now[0] += 40  # the first three are 70 s old
    assert payloads(box.next(100)) == [3, 4]
    assert box.expired == 3 and box.depth == 2


def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_starts(tmp_path):
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    assert box.recovered_corrupt == 1 and box.depth == 0
    assert list(tmp_path.glob("o.sqlite.corrupt-*"))
    box.append(msgs(0, 1))
    assert payloads(box.next(1)) == [0]


def test_a_failed_append_leaves_the_outbox_as_it_was(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.append(msgs(0, 2))
    with pytest.raises(sqlite3.Error):
        box.append([("t", b"x"), ("t", [1, 2])])  # the second cannot be stored: the whole batch rolls back
    assert box.depth == 2 and payloads(box.next(10)) == [0, 1]


def test_what_append_returned_for_survives_kill_9(tmp_path):
    """A child appends batches and reports each; SIGKILL mid-stream; every reported batch is on disk."""
    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from edgeloop.edge.outbox import Outbox
        box = Outbox({str(path)!r}, fsync="normal")
        i = 0
        while True:
            box.append([("results/d/m", str(i * 10 + k).encode()) for k in range(10)])
            print(i, flush=True)
            i += 1
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    reported = -1
    for line in child.stdout:
        reported = int(line)
        if reported >= 200:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    box = Outbox(path)
    stored = payloads(box.next(1_000_000))
    assert stored[: (reported + 1) * 10] == list(range((reported + 1) * 10))
    assert len(stored) % 10 == 0  # never half a batch: one transaction per append


def test_default_state_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELOOP_STATE_DIR", str(tmp_path / "s"))
    assert default_state_dir() == tmp_path / "s"
    monkeypatch.delenv("EDGELOOP_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "x"))
    assert default_state_dir() == tmp_path / "x" / "edgeloop"


OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 30)),
    st.tuples(st.just("next"), st.integers(0, 40)),
    st.tuples(st.just("ack"), st.integers(0, 40)),
    st.tuples(st.just("wait"), st.integers(0, 50)),
    st.tuples(st.just("reopen"), st.just(0)),
), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_reads_from_the_in_memory_head_equal_reads_from_the_table(tmp_path_factory, ops):
    """The head (rows kept in memory by append) is a cache: whatever happens -- overflow drops, TTL expiry,
    acks, a reopen -- ``next`` hands out exactly what an outbox that always reads the table hands out."""
    work = tmp_path_factory.mktemp("head")
    now = [1000.0]
    kw = {"max_messages": 60, "max_bytes": 60 * 40, "ttl_s": 100, "clock": lambda: now[0]}
    fast, table = Outbox(work / "fast.sqlite", **kw), Outbox(work / "table.sqlite", **kw)
    out: dict[str, list] = {"fast": [], "table": []}
    counter = 0
    for op, n in ops:
        table._drop_head()  # this one never uses its head
        if op == "append":
            batch = msgs(counter, n)
            counter += n
            fast.append(batch)
            table.append(batch)
        elif op == "next":
            a, b = fast.next(n), table.next(n)
            assert [(r.topic, r.payload) for r in a] == [(r.topic, r.payload) for r in b]
            out["fast"] += a
            out["table"] += b
        elif op == "ack":
            fast.delete(out["fast"][:n])
            table.delete(out["table"][:n])
            del out["fast"][:n], out["table"][:n]
        elif op == "wait":
            now[0] += n
        else:
            fast.close()
            table.close()
            fast, table = Outbox(work / "fast.sqlite", **kw), Outbox(work / "table.sqlite", **kw)
            out = {"fast": [], "table": []}
        assert fast.counters() == table.counters()
    assert [(r.topic, r.payload) for r in fast.next(10_000)] == [(r.topic, r.payload) for r in table.next(10_000)]
    fast.close()
    table.close()


def test_the_head_serves_reads_while_the_sender_keeps_up(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(5):
        box.append(msgs(i, 1))
        assert payloads(box.next(10)) == [i]
    assert box.head_reads == 5
