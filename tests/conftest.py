"""Shared fixtures: real servers from lab/servers.py, started on free loopback ports.

Nothing here skips: a missing binary or a server that does not come up fails the test with the
server's log tail (``make deps`` installs the binaries).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/: certs, deploy_fixtures, ...
sys.path.insert(0, str(Path(__file__).parents[1]))  # the checkout: lab/ (not installed)

from lab.servers import InfluxDB1, Mosquitto, VictoriaMetrics  # noqa: E402

TIERS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests under tests/integration and tests/e2e with their tier (``-m integration``)."""
    for item in items:
        for tier in TIERS:
            if tier in Path(str(item.path)).parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def edge_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Edge outboxes (runtime/outbox.py) of this test, and of edge processes it starts, live in its tmp dir."""
    state = tmp_path / "edgeloop-state"
    monkeypatch.setenv("EDGELOOP_STATE_DIR", str(state))
    return state


@pytest.fixture
def unique_id() -> str:
    """A short random id for topics, devices and databases, so tests never see each other's data."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A fresh mosquitto broker per test (no persistence). Start to first CONNACK takes about
    25 ms here, so a broker per test costs less than sharing one and cleaning up after it."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="module")
def influxdb(tmp_path_factory: pytest.TempPathFactory):
    """One influxd per test module (start to first ``/ping`` 204 takes about 25 ms here);
    tests take a fresh database each through ``influx_db``."""
    with InfluxDB1(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest.fixture
def influx_db(influxdb: InfluxDB1, unique_id: str) -> tuple[InfluxDB1, str]:
    """(server, name of a database created for this test only)."""
    name = f"test_{unique_id}"
    influxdb.create_database(name)
    return influxdb, name


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory):
    """One VictoriaMetrics per test module (start to ``/health`` OK takes about 25 ms here). It has
    no databases: keep tests apart with a ``unique_id`` in measurement names or tags."""
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria")) as server:
        yield server
