"""The workshop's own promises, against a real mosquitto: the rigs built on them rely on these."""

from __future__ import annotations

import time

import pytest
from lab.mqtt import Publisher, Watcher, close, connect, paced, publish_all
from lab.procs import CliProcess
from lab.servers import Mosquitto, eventually


def test_the_watcher_keeps_watching_across_a_broker_restart(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker, Watcher(broker.port, ["t/#"]) as watch:
        pub = connect(broker.port)
        publish_all(pub, [("t/1", b"before")])
        close(pub)
        eventually(lambda: watch.on("t/") == [b"before"])
        broker.kill()
        broker.restart()  # same port; the watcher reconnects and subscribes again (clean session)
        pub = connect(broker.port, timeout=30)
        try:
            eventually(lambda: (publish_all(pub, [("t/2", b"after")]), b"after" in watch.on("t/"))[1], timeout=30)
        finally:
            close(pub)
    assert watch.on("t/")[0] == b"before"


class SlowWatcher(Watcher):
    """Takes 1 ms per message, so the broker's acks to the publisher run well ahead of what it has seen."""

    def _on_message(self, *args) -> None:  # noqa: ANN002
        time.sleep(0.001)
        super()._on_message(*args)


@pytest.mark.parametrize("qos", [0, 1])
def test_sync_returns_once_everything_published_before_it_has_arrived(mosquitto, qos):
    with SlowWatcher(mosquitto.port, ["s/#"]) as watch:
        pub = connect(mosquitto.port)
        try:
            for round_ in range(3):
                publish_all(pub, [(f"s/{round_}/{i}", str(i).encode()) for i in range(500)], qos=1)
                watch.sync("s/sync")  # no wait for a count: the marker comes back after all of them
                assert len(watch.on(f"s/{round_}/")) == 500
            publish_all(pub, [("s/last", b"x")], qos=qos)
            watch.sync("s/sync")
            assert watch.on("s/last") == [b"x"] and watch.on("s/sync") == []  # markers are not kept
        finally:
            close(pub)


def test_the_publisher_counts_exactly_what_it_sent_even_when_stopped(mosquitto):
    with Watcher(mosquitto.port, ["p/#"]) as watch:
        done = Publisher(mosquitto.port, paced(((f"p/{i}", b"x") for i in range(50)), 500.0)).start()
        done.wait_acked(30)
        assert done.published == 50
        slow = Publisher(mosquitto.port, paced(((f"p/slow/{i}", b"x") for i in range(10_000)), 100.0)).start()
        eventually(lambda: slow.published >= 5)
        slow.stop()
        slow.wait_acked(30)
        slow.close()
        done.close()
        eventually(lambda: len(watch.on("p/slow/")) >= slow.published)
        assert 5 <= slow.published < 10_000
        assert len(watch.on("p/slow/")) == slow.published  # nothing read from the schedule went out uncounted
        assert len(watch.on("p/")) == 50 + slow.published


def test_a_process_that_dies_fails_the_online_wait_at_once_with_its_log(mosquitto, tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = CliProcess(["edge", "run", "-c", str(missing)], tmp_path / "edge.log").start()
    died = r"(?s)exited with code [1-9].*nope.yaml"
    with Watcher(mosquitto.port) as watch, pytest.raises(AssertionError, match=died):
        watch.wait_online("never", proc, timeout=600)  # not the timeout: the exit ends the wait
    assert proc.terminate() not in (0, None) and proc.starts == 1
