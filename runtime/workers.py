"""Several inference processes behind one MQTT connection (edge config ``workers: N``).

One Python process uses one core; a Pi has four. With ``workers: N > 1`` the edge
process keeps what must stay single -- the MQTT connection and its persistent
session, the input acks, the disk outbox and its sender -- and hands decoding,
windows, features, inference and result encoding to N worker processes.

Why partition instead of ``$share``: windows are cut from consecutive readings of
one stream, so every reading of a stream must reach the same worker, in order.
mosquitto's shared subscriptions are round-robin and split streams. Here a reading
goes to worker ``crc32(key) % N`` where ``key`` is its topic -- a stream's readings
share a topic -- or, for Sparkplug B, ``group/edge_node``: one node's BIRTH
(aliases), its ``seq`` and every device's DATA must meet in one decoder.

At-least-once is unchanged. A worker answers each batch with how many samples
each reading gave (what ``InputAcks`` needs) and the encoded results; the edge
process appends those to the outbox and acknowledges readings exactly as with
one process. A worker that dies (OOM killer, a segfault in the interpreter)
took window state with it, so the edge stops: the other workers finish and
their readings are acknowledged, the dead worker's readings never are, and the
process exits 1 for its supervisor (systemd ``Restart=``) to start it again --
the broker then redelivers what was not acknowledged, as after any crash
(docs/reliability.md).

Not yet with workers: signed deployment (``deploy.enabled``) and cameras
(``vision:``); config validation refuses them, naming ``workers``.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

from edgeloop import logsetup

if TYPE_CHECKING:
    from edgeloop.edge.config import EdgeConfig

log = logging.getLogger("edgeloop.edge")

#: Worker -> edge: every ``COUNTERS_EVERY_S`` (and in the last answer) a snapshot of its counters rides along.
COUNTERS_EVERY_S = 1.0

_STOP = None  # edge -> worker: drain, answer, exit


def partition_key(topic: str) -> str:
    """What decides a reading's worker: its topic, or for Sparkplug B the ``group/edge_node`` it belongs to."""
    if topic.startswith("spBv1.0/"):
        levels = topic.split("/", 4)
        if len(levels) >= 4:
            return f"{levels[1]}/{levels[3]}"
    return topic


def worker_of(topic: str, workers: int) -> int:
    """Stable across processes and restarts (``hash()`` of a str is salted per process)."""
    return zlib.crc32(partition_key(topic).encode("utf-8", "surrogatepass")) % workers


# ---------------------------------------------------------------------------------------- worker process


def _worker_main(index: int, cfg: EdgeConfig, source: str, conn: Connection, logging_setup: tuple[str, str]) -> None:
    """A worker process: batches of (topic, payload, received) in, (samples, messages, ...) out."""
    # The edge process owns shutdown: Ctrl-C or systemd's SIGTERM to the whole group must not
    # cut a worker short; it stops when the edge says so, or when the edge's end of the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from edgeloop.logsetup import configure_logging

    configure_logging(*logging_setup)
    from edgeloop.edge.startup import build_engine
    from edgeloop.rejects import Rejects

    letters: list[tuple[str, bytes]] = []
    rejects = Rejects("edge", log,
                      publish=(lambda topic, payload: letters.append((topic, payload))) if cfg.output.deadletter else None,
                      node=cfg.node_id)
    engine = build_engine(cfg, rejects, source)
    expiry_every = engine.expiry_interval_s
    next_expiry = time.monotonic() + expiry_every
    next_counters = 0.0
    max_batch = cfg.batching.max_batch
    conn.send(("ready", index))
    stopping = False
    while not stopping:
        if not conn.poll(min(1.0, expiry_every)):
            batch = []
        else:
            try:
                batch = conn.recv()
            except EOFError:
                return  # the edge process is gone: nothing to answer to
        samples: list[int] = []
        while True:
            if batch is _STOP:
                stopping = True
                break
            for topic, payload, received in batch:
                samples.append(engine.ingest(topic, payload, received))
            # Take batches already waiting, up to a full interpreter batch: fewer, larger flushes under load.
            if engine.pending >= max_batch or not conn.poll(0):
                break
            try:
                batch = conn.recv()
            except EOFError:
                return
        messages = engine.flush() if engine.pending else []
        now = time.monotonic()
        if now >= next_expiry:
            next_expiry = now + expiry_every
            engine.expire_idle(now)
        counters = None
        if stopping or now >= next_counters:
            next_counters = now + COUNTERS_EVERY_S
            counters = {**engine.counters, "streams_live": engine.live_streams}, dict(rejects.by_reason), rejects.dead_lettered
        if samples or messages or counters is not None:
            replies, engine.replies = engine.replies, []
            sent, letters[:] = list(letters), []
            conn.send((samples, messages, replies, sent, counters))
    conn.send(("stopped", index))


# ---------------------------------------------------------------------------------------- edge side


class WorkerDied(RuntimeError):
    pass


class WorkerPool:
    """N worker processes; ``submit`` from one thread, answers handled on the pool's collector thread.

    ``on_answer(items, samples, messages, replies, letters)`` runs on the collector thread for each answer,
    ``items`` being the (topic, payload, received, mid, qos, generation) tuples it covers, in order.
    ``on_death(message)`` runs once if a worker dies before it was told to stop.
    """

    def __init__(self, cfg: EdgeConfig, source: str, on_answer: Callable[..., None],
                 on_death: Callable[[str], None]) -> None:
        self.size = cfg.workers
        self.on_answer = on_answer
        self.on_death = on_death
        ctx = multiprocessing.get_context("spawn")  # the edge has threads (paho): never fork it
        self._conns: list[Connection] = []
        self.procs: list = []
        setup = logsetup.current()  # the child logs as the edge does (level, text or JSON)
        for index in range(self.size):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(index, cfg, source, theirs, setup),
                               name=f"edgeloop-worker-{index}", daemon=True)
            self._conns.append(ours)
            self.procs.append((proc, theirs))
        #: Per worker: items sent, not yet answered, oldest first.
        self._outstanding: list[deque] = [deque() for _ in range(self.size)]
        self._counters: list[tuple[dict, dict, int]] = [({}, {}, 0)] * self.size
        self._stopped = [False] * self.size
        self._stopping = False
        self._lock = threading.Lock()
        self._collector = threading.Thread(target=self._collect, name="edgeloop-collector", daemon=True)
        self.dead: str | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the workers and wait until each has built its engine (model loaded, stages checked)."""
        for proc, theirs in self.procs:
            proc.start()
            theirs.close()
        deadline = time.monotonic() + timeout_s
        for index, conn in enumerate(self._conns):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerDied(f"worker {index} did not start within {timeout_s:.0f}s")
            try:
                conn.recv()
            except EOFError:
                raise WorkerDied(f"worker {index} exited while starting (exit code {self.procs[index][0].exitcode}); "
                                 "its log is above") from None
        self._collector.start()
        log.info("%d inference workers started (pids %s)", self.size, ", ".join(str(p.pid) for p, _ in self.procs))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]

    @property
    def outstanding(self) -> int:
        return sum(len(d) for d in self._outstanding)

    def submit(self, index: int, items: list[tuple]) -> None:
        """Send a batch of inbox items to worker ``index`` (blocks while its pipe is full: backpressure)."""
        with self._lock:
            self._outstanding[index].extend(items)
        try:
            self._conns[index].send([item[:3] for item in items])
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # the collector sees the death and reports it

    def stop(self, timeout_s: float) -> bool:
        """Tell every worker to drain; wait for their last answers. True once every answer is handled."""
        self._stopping = True
        for conn in self._conns:
            try:
                conn.send(_STOP)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                pass
        self._collector.join(timeout_s)
        deadline = time.monotonic() + 5.0
        for proc, _ in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        return not self._collector.is_alive()

    def counters(self) -> Counter:
        out: Counter = Counter()
        for counters, _by_reason, _letters in self._counters:
            out.update(counters)
        return out

    def rejects_by_reason(self) -> Counter:
        out: Counter = Counter()
        for _counters, by_reason, _letters in self._counters:
            out.update(by_reason)
        return out

    def dead_lettered(self) -> int:
        return sum(letters for _c, _r, letters in self._counters)

    def _collect(self) -> None:
        sentinels = {proc.sentinel: index for index, (proc, _) in enumerate(self.procs)}
        conns = {conn: index for index, conn in enumerate(self._conns)}
        while not all(self._stopped):
            live = [c for c, i in conns.items() if not self._stopped[i]]
            ready = wait(live + [s for s, i in sentinels.items() if not self._stopped[i]], timeout=1.0)
            for obj in ready:
                if obj in conns:
                    self._answer(conns[obj])
            for obj in ready:
                index = sentinels.get(obj)
                if index is not None and not self._stopped[index]:
                    while self._conns[index].poll(0):  # what it said before it went
                        if not self._answer(index):
                            break
                    if not self._stopped[index]:
                        self._stopped[index] = True  # its readings stay unanswered: never acknowledged
                        self._died(index)

    def _answer(self, index: int) -> bool:
        try:
            answer = self._conns[index].recv()
        except (EOFError, OSError):
            return False
        if answer[0] == "stopped":
            self._stopped[index] = True
            return True
        samples, messages, replies, letters, counters = answer
        if counters is not None:
            self._counters[index] = counters
        with self._lock:
            outstanding = self._outstanding[index]
            items = [outstanding.popleft() for _ in range(len(samples))]
        self.on_answer(items, samples, messages, replies, letters)
        return True

    def _died(self, index: int) -> None:
        proc = self.procs[index][0]
        proc.join(1.0)
        code = proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if self._stopping and code == 0:
            return
        self.dead = (f"inference worker {index} (pid {proc.pid}) died ({how}) with {len(self._outstanding[index])} "
                     "readings unanswered: stopping the edge so its supervisor restarts it; the broker redelivers "
                     "every reading not acknowledged")
        self.on_death(self.dead)
