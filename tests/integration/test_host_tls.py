"""Mutual TLS on a host, as docs/security.md ("Broker on a host") tells it, with the project's own publisher.

The ```` ```sh host-tls ```` block of docs/security.md is run as written, with ``/etc/mosquitto``
and ``/var/lib/mosquitto`` moved under a temporary root, on certificates and the ACL ``make-certs.sh``
made from the shipped example fleet file (docker/mosquitto/fleet). mosquitto then starts as root
from the file the block wrote (only the listener is moved to a free loopback port) and, like the
packaged service, drops to the user ``mosquitto`` before it reads the key. Through it, ``edgeloop
devices simulate`` publishes over mutual TLS as devices whose certificates ``make-certs.sh``
issued, at QoS 1, and the edge ``edge-1`` (its own certificate) scores the readings of the devices
the fleet file lets it serve.

Runs as root (as CI and ``make test`` on a fresh machine do): the point is what root-started
mosquitto can and cannot read.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from docblocks import fenced
from securebroker import REPO
from lab.procs import CliProcess
from lab.servers import Mosquitto, eventually

from edgeloop.contract import InferenceResult
from edgeloop.mqtt import MqttLink, MqttSettings, TlsSettings

DOCS = REPO / "docs" / "security.md"
MOSQUITTO_DIR = REPO / "docker" / "mosquitto"
DEVICES = ("dev-1", "dev-2")  # in docker/mosquitto/fleet, served by edge-1


def _as_root() -> None:
    assert os.geteuid() == 0, "this test starts mosquitto as root (as a packaged broker is): run it as root"
    pwd.getpwnam("mosquitto")  # the Debian package's user; KeyError: `make deps` installs mosquitto


def install_host_broker(root: Path) -> Path:
    """``make-certs.sh`` certificates, then the docs' host-tls block under ``root``; the conf file it wrote."""
    checkout = root / "checkout" / "docker" / "mosquitto"
    checkout.mkdir(parents=True)
    for name in ("fleet", "mosquitto.conf", "make-certs.sh"):
        shutil.copy2(MOSQUITTO_DIR / name, checkout / name)
    for args in (["ca"], ["server", "localhost", "127.0.0.1"], ["fleet", "fleet"]):
        subprocess.run(["sh", "./make-certs.sh", "certs", *args], cwd=checkout, check=True, capture_output=True,
                       timeout=60)
    var = root / "var" / "lib" / "mosquitto"  # the package creates it, owned by mosquitto
    var.mkdir(parents=True)
    shutil.chown(var, "mosquitto", "mosquitto")
    (block,) = fenced(DOCS, "sh host-tls")
    script = block.replace("/etc/mosquitto", f"{root}/etc/mosquitto").replace("/var/lib/mosquitto", str(var))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root / "checkout", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"the host-tls block failed:\n{script}\n{done.stdout}{done.stderr}"
    conf = root / "etc" / "mosquitto" / "mosquitto.conf"
    assert "/mosquitto/config" not in conf.read_text() and "/mosquitto/data" not in conf.read_text()
    return conf


def host_broker(root: Path, conf: Path) -> Mosquitto:
    """mosquitto as the packaged service runs it: started as root, running as ``mosquitto``."""
    run = root / "run"
    broker = Mosquitto(run, listener_conf=conf.read_text().replace("listener 8883", "listener {port} {host}"),
                       user="mosquitto")
    shutil.chown(run, "mosquitto", "mosquitto")  # its log file (opened after the drop, like the key)
    return broker


@pytest.fixture
def root():
    _as_root()
    # Not under pytest's tmp dir: that is 0700 root, and the broker must reach its files as `mosquitto`.
    path = Path(tempfile.mkdtemp(prefix="edgeloop-host-tls-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_root_only_server_key_stops_the_host_broker(root):
    """What the docs warn about: the key as make-certs.sh writes it (0600 root) is unreadable after the drop."""
    conf = install_host_broker(root)
    key = root / "etc" / "mosquitto" / "certs" / "server.key"
    shutil.chown(key, "root", "root")
    key.chmod(0o600)
    broker = host_broker(root, conf)
    try:
        broker.start()  # may return: mosquitto opens its listening socket before it loads the key
    except AssertionError as exc:
        why = str(exc)
    else:
        eventually(lambda: not broker.running, timeout=15, message="mosquitto kept running with a key it cannot read")
        why = broker.log_tail()
    finally:
        broker.stop()
    assert "Unable to load server key file" in why and "Permission denied" in why, why


def test_the_documented_host_broker_serves_simulated_devices_over_mutual_tls(root, tmp_path):
    conf = install_host_broker(root)
    key = root / "etc" / "mosquitto" / "certs" / "server.key"
    assert (key.stat().st_mode & 0o777, key.stat().st_gid) == (0o640, pwd.getpwnam("mosquitto").pw_gid)
    certs = root / "checkout" / "docker" / "mosquitto" / "certs"
    results: list[InferenceResult] = []
    online: list[bytes] = []

    def observe(msg) -> None:  # noqa: ANN001
        if msg.topic.startswith("results/"):
            results.append(InferenceResult.model_validate_json(msg.payload))
        elif b'"online"' in msg.payload:
            online.append(msg.payload)
    with host_broker(root, conf) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        # The bridge's identity reads results/# under the shipped ACL: it watches what the edge publishes.
        watcher = MqttLink(
            MqttSettings(url=url, tls=TlsSettings(ca_file=certs / "ca.crt", cert_file=certs / "edgeloop-bridge.crt",
                                                  key_file=certs / "edgeloop-bridge.key")),
            "test-watcher", subscriptions=[("results/#", 1), ("status/edge-1", 1)], on_message=observe)
        watcher.start(wait_s=10)
        edge_cfg = tmp_path / "edge.yaml"
        edge_cfg.write_text(json.dumps({
            "node_id": "edge-1", "input": {"qos": 1}, "status_interval_s": 1,
            "mqtt": {"url": url, "tls": {"ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "edge-1.crt"),
                                         "key_file": str(certs / "edge-1.key")}},
        }))
        edge = CliProcess(["edge", "run", "-c", str(edge_cfg)], tmp_path / "edge.log").start()
        try:
            eventually(lambda: online, timeout=60, message="the edge (edge-1) did not come online (edge.log)")
            sim = subprocess.run(
                [sys.executable, "-m", "edgeloop.cli", "devices", "simulate", "--broker", url,
                 "--ca-file", str(certs / "ca.crt"), "--cert-dir", str(certs), "--device-ids", ",".join(DEVICES),
                 "--count", "12", "--rate", "50", "--qos", "1", "--seed", "3"],
                capture_output=True, text=True, timeout=120)
            assert sim.returncode == 0, sim.stdout + sim.stderr
            report = json.loads(sim.stdout)
            assert (report["qos"], report["acknowledged"], report["failed"]) == (1, True, 0)
            assert report["sent"] == 12 * len(DEVICES) and report["sent_by_sensor"]["vibration"] >= 20
            # Windows of 2 readings: each device's 10 or more vibration readings make 9 or more results.
            eventually(lambda: all(sum(r.device == d for r in results) >= 9 for d in DEVICES), timeout=60,
                       message=f"results from the edge: {results}")
        finally:
            rc = edge.terminate()
            watcher.stop()
    assert rc == 0, edge.log_tail()
    assert {(r.device, r.node) for r in results} == {(d, "edge-1") for d in DEVICES}
    assert all(len({r.seq for r in results if r.device == d}) == sum(r.device == d for r in results) for d in DEVICES)
    assert "Traceback" not in edge.log()
