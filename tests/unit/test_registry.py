"""The on-disk model registry: versions, pointers, refusals, audit log, integrity."""

from __future__ import annotations

import json
import threading

import pytest

from edgeloop.bridge.events import EventWriter, event_line
from edgeloop.bridge.registry import Registry, RegistryError
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.deploy_contract import SelfTest
from edgeloop.modelfile import load_model_files, sha256_bytes

CONTENT, META = load_model_files(BUNDLED_MODEL)
NAME = META.name


def version(v: str, pad: int = 1):
    content = CONTENT + b"\0" * pad
    return content, META.model_copy(update={"version": v, "sha256": sha256_bytes(content)})


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "reg", actor="tester")


def test_add_promote_rollback_and_the_audit_log(registry):
    assert registry.current(NAME) is None and registry.list(NAME) == []
    assert registry.add(NAME, CONTENT, META) == "1.0.0"
    registry.promote(NAME, "1.0.0")
    registry.add(NAME, *version("1.1.0"), parent="1.0.0")
    registry.promote(NAME, "1.1.0", actor="drift-monitor", reason="retrained")
    assert (registry.current(NAME), registry.previous(NAME)) == ("1.1.0", "1.0.0")
    rows = {r.version: r for r in registry.list(NAME)}
    assert rows["1.1.0"].current and rows["1.0.0"].previous and rows["1.1.0"].parent == "1.0.0"
    path, meta = registry.get(NAME, "1.1.0")
    assert path.read_bytes() == CONTENT + b"\0" and meta.version == "1.1.0"

    assert registry.rollback(NAME, reason="bad") == "1.0.0"
    assert (registry.current(NAME), registry.previous(NAME)) == ("1.0.0", None)
    with pytest.raises(RegistryError, match="no previous"):
        registry.rollback(NAME)

    audit = registry.audit(NAME)
    assert [e["action"] for e in audit] == ["add", "promote", "add", "promote", "rollback"]
    assert audit[3]["actor"] == "drift-monitor" and audit[3]["reason"] == "retrained" and audit[3]["previous"] == "1.0.0"
    assert audit[4]["rolled_back"] == "1.1.0" and audit[0]["actor"] == "tester"
    assert all(isinstance(e["ts"], float) for e in audit)
    # Append-only: a second registry object on the same directory sees and extends the same log.
    Registry(registry.root).note(NAME, "1.0.0", "deploy", targets="*")
    assert [e["action"] for e in registry.audit(NAME)][-1] == "deploy"
    assert len((registry.root / "audit.jsonl").read_text().splitlines()) == 6


def test_adds_are_idempotent_but_never_overwrite(registry):
    registry.add(NAME, CONTENT, META)
    assert registry.add(NAME, CONTENT, META) == "1.0.0"  # a retried job
    other, meta = version("1.0.0")
    with pytest.raises(RegistryError, match="other bytes"):
        registry.add(NAME, other, meta)
    with pytest.raises(RegistryError, match="does not match"):
        registry.add(NAME, CONTENT + b"x", META.model_copy(update={"version": "2"}))
    with pytest.raises(RegistryError, match="names model"):
        registry.add("other_model", CONTENT, META)
    with pytest.raises(RegistryError, match="topic level"):
        registry.add(NAME, *version("1/2"))
    assert [e["action"] for e in registry.audit()] == ["add"]


def test_refused_versions_are_not_promoted_until_cleared(registry):
    registry.add(NAME, CONTENT, META)
    registry.add(NAME, *version("2.0.0"))
    registry.mark_refused(NAME, "2.0.0", "canary failed: edge-1 rolled_back:unhealthy")
    assert registry.refused(NAME) == {"2.0.0": "canary failed: edge-1 rolled_back:unhealthy"}
    with pytest.raises(RegistryError, match="refused"):
        registry.promote(NAME, "2.0.0")
    registry.clear_refused(NAME, "2.0.0")
    registry.promote(NAME, "2.0.0")
    assert registry.current(NAME) == "2.0.0"
    with pytest.raises(RegistryError, match="no version"):
        registry.promote(NAME, "9.9.9")


def test_tampered_artifacts_are_detected_on_read(registry):
    registry.add(NAME, CONTENT, META)
    path, _ = registry.get(NAME, "1.0.0")
    path.write_bytes(CONTENT[:-1] + bytes([CONTENT[-1] ^ 1]))
    with pytest.raises(RegistryError, match="tampered"):
        registry.get(NAME, "1.0.0")


def test_selftest_vectors_are_kept_with_the_version(registry):
    registry.add(NAME, CONTENT, META, selftest=SelfTest(inputs=[[0.0] * 30], expected=[[1.0]]))
    assert registry.selftest(NAME, "1.0.0").expected == [[1.0]]
    registry.set_selftest(NAME, "1.0.0", SelfTest(inputs=[[1.0] * 30], expected=[[2.0]], atol=0.5))
    assert registry.selftest(NAME, "1.0.0").atol == 0.5


def test_writes_are_atomic_and_serialised(registry):
    registry.add(NAME, CONTENT, META)
    for i in range(8):
        registry.add(NAME, *version(f"1.{i + 1}.0", pad=i + 1))

    def promote(v: str) -> None:
        for _ in range(5):
            registry.promote(NAME, v)

    threads = [threading.Thread(target=promote, args=(f"1.{i + 1}.0",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = json.loads((registry.root / NAME / "state.json").read_text())
    promotes = [e for e in registry.audit(NAME) if e["action"] == "promote"]
    assert len(state["history"]) == len(promotes)  # no lost update
    assert not list(registry.root.rglob("*.tmp"))


# --------------------------------------------------------------------------- events


def test_event_lines_escape_and_type_their_fields():
    line = event_line("m,1", "deploy", 'canary "ok"\non edge-1', "1.1.0", ts=1.5, windows=50, rate=0.01, ok=True,
                      static_tags={"env": "prod"})
    assert line == ('events,env=prod,kind=deploy,model=m\\,1 message="canary \\"ok\\" on edge-1",version="1.1.0",'
                    'ok=true,rate=0.01,windows=50i 1500000000')


def test_event_writer_logs_and_survives_a_failing_sink():
    from edgeloop.bridge.errors import Unavailable

    class Down:
        def write(self, lines):
            raise Unavailable("down")

    writer = EventWriter(Down())
    writer("m", "refused", "canary failed", "2.0.0")
    assert writer.failed == 1 and writer.written == 0
