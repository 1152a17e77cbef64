"""On-disk model registry: every version of every model, who is current, and an audit log.

Why files and not a database: the registry is small (a few versions of a few
models), must survive the bridge restarting, must be inspectable with ``ls``
and ``cat``, and must be shared by the bridge, the retrain worker and the CLI
on one machine. Every write is atomic (temp file + ``os.replace``) and every
change is serialised by an ``flock`` on ``root/.lock``, so concurrent
processes never see a half-written file.

Layout::

    root/
      audit.jsonl                      append-only: {"ts", "actor", "action", "model", "version", ...}
      {model}/
        state.json                     {"history": [promoted versions, oldest first], "refused": {version: reason}}
        deploy_seq.json                {"last": the seq of the last manifest signed for this model}
        {version}/
          model.tflite                 the artifact
          metadata.json                edgeloop.modelfile.ModelMetadata (sha256 covers model.tflite)
          record.json                  {"version", "parent", "added", "actor", "sha256", "size"}
          selftest.json                optional edgeloop.deploy_contract.SelfTest (else computed at deploy time)

``current`` is the last entry of ``history`` and ``previous`` the one before
it; ``promote`` appends, ``rollback`` removes the last entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloop.errors import EdgeloopError
from edgeloop.contract import TOPIC_LEVEL_PATTERN
from edgeloop.deploy_contract import SelfTest
from edgeloop.modelfile import ModelMetadata, sha256_bytes

_LEVEL_RE = re.compile(TOPIC_LEVEL_PATTERN)


class RegistryError(EdgeloopError):
    """A registry operation that cannot be done (unknown model or version, conflicting add, ...)."""


@dataclass(frozen=True)
class VersionInfo:
    """One row of ``Registry.list``."""

    name: str
    version: str
    sha256: str
    size: int
    parent: str | None
    added: float
    actor: str
    current: bool
    previous: bool
    refused: str | None  # the reason, if the version was refused (failed canary, ...)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@{os.uname().nodename}"
    except (OSError, KeyError):
        return "unknown"


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


class Registry:
    """``Registry(root)``: add, get, list, promote, rollback, refuse; every change audited.

    ``actor`` names who makes the changes (default ``user@host``); each call
    may override it (``actor="drift-monitor"``).
    """

    def __init__(self, root: str | Path, actor: str | None = None) -> None:
        self.root = Path(root)
        self.actor = actor or default_actor()
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _model_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _LEVEL_RE.match(name):
            raise RegistryError(f"model name {name!r} must match {TOPIC_LEVEL_PATTERN}")
        return self.root / name

    def _version_dir(self, name: str, version: str) -> Path:
        if not isinstance(version, str) or not _LEVEL_RE.match(version):
            raise RegistryError(
                f"version {version!r} must match {TOPIC_LEVEL_PATTERN} (it becomes an MQTT topic level)"
            )
        return self._model_dir(name) / version

    def _state(self, name: str) -> dict[str, Any]:
        path = self._model_dir(name) / "state.json"
        if not path.exists():
            return {"history": [], "refused": {}}
        state = json.loads(path.read_text(encoding="utf-8"))
        state.setdefault("history", [])
        state.setdefault("refused", {})
        return state

    def _save_state(self, name: str, state: dict[str, Any]) -> None:
        atomic_write(self._model_dir(name) / "state.json", json_bytes(state))

    def _audit(self, action: str, name: str, version: str | None, actor: str | None, **detail: Any) -> None:
        entry = {"ts": time.time(), "actor": actor or self.actor, "action": action, "model": name}
        if version is not None:
            entry["version"] = version
        entry.update({k: v for k, v in detail.items() if v is not None})
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.root / "audit.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _require(self, name: str, version: str) -> Path:
        vdir = self._version_dir(name, version)
        if not (vdir / "record.json").exists():
            raise RegistryError(f"model {name} has no version {version!r} in {self.root}")
        return vdir

    # ------------------------------------------------------------------ reads

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _LEVEL_RE.match(p.name))

    def versions(self, name: str) -> list[str]:
        """Versions in the order they were added."""
        mdir = self._model_dir(name)
        if not mdir.is_dir():
            return []
        records = []
        for vdir in mdir.iterdir():
            rec = vdir / "record.json"
            if rec.exists():
                records.append((json.loads(rec.read_text(encoding="utf-8"))["added"], vdir.name))
        return [v for _, v in sorted(records)]

    def current(self, name: str) -> str | None:
        history = self._state(name)["history"]
        return history[-1] if history else None

    def previous(self, name: str) -> str | None:
        history = self._state(name)["history"]
        return history[-2] if len(history) > 1 else None

    def get(self, name: str, version: str) -> tuple[Path, ModelMetadata]:
        """(path of the .tflite, its metadata). The sha256 is checked on every read."""
        vdir = self._require(name, version)
        meta = ModelMetadata.model_validate_json((vdir / "metadata.json").read_text(encoding="utf-8"))
        path = vdir / "model.tflite"
        if sha256_bytes(path.read_bytes()) != meta.sha256:
            raise RegistryError(f"{path}: sha256 differs from its metadata (the registry was tampered with)")
        return path, meta

    def selftest(self, name: str, version: str) -> SelfTest | None:
        path = self._require(name, version) / "selftest.json"
        return SelfTest.model_validate_json(path.read_text(encoding="utf-8")) if path.exists() else None

    def record(self, name: str, version: str) -> dict[str, Any]:
        return json.loads((self._require(name, version) / "record.json").read_text(encoding="utf-8"))

    def refused(self, name: str) -> dict[str, str]:
        """{version: reason} of versions marked refused."""
        return dict(self._state(name)["refused"])

    def list(self, name: str) -> list[VersionInfo]:
        state = self._state(name)
        history = state["history"]
        cur = history[-1] if history else None
        prev = history[-2] if len(history) > 1 else None
        out = []
        for version in self.versions(name):
            rec = self.record(name, version)
            out.append(
                VersionInfo(
                    name=name,
                    version=version,
                    sha256=rec["sha256"],
                    size=rec["size"],
                    parent=rec.get("parent"),
                    added=rec["added"],
                    actor=rec.get("actor", ""),
                    current=version == cur,
                    previous=version == prev,
                    refused=state["refused"].get(version),
                )
            )
        return out

    def audit(self, name: str | None = None) -> list[dict[str, Any]]:
        path = self.root / "audit.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [e for e in entries if name is None or e.get("model") == name]

    # ------------------------------------------------------------------ writes

    def add(
        self,
        name: str,
        tflite_bytes: bytes,
        metadata: ModelMetadata,
        parent: str | None = None,
        *,
        selftest: SelfTest | None = None,
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Store a new version (``metadata.version``) and return it. Does not promote it.

        Adding the same version with the same bytes again is a no-op (a retried
        retrain job); with different bytes it is a RegistryError naming the way
        out. ``detail``: more fields for the audit entry.
        """
        if metadata.name != name:
            raise RegistryError(f"metadata names model {metadata.name!r}, not {name!r}")
        if sha256_bytes(tflite_bytes) != metadata.sha256:
            raise RegistryError(f"metadata sha256 of {name} {metadata.version} does not match the bytes")
        version = metadata.version
        vdir = self._version_dir(name, version)
        with self._locked():
            if (vdir / "record.json").exists():
                existing = self.record(name, version)
                if existing["sha256"] == metadata.sha256:
                    return version
                raise RegistryError(
                    f"model {name} already has a version {version!r} with other bytes: register this file as "
                    f"another version (`edgeloop model add {name} FILE --version X.Y.Z`)"
                )
            if parent is not None and not (self._version_dir(name, parent) / "record.json").exists():
                raise RegistryError(f"parent version {parent!r} of {name} is not in the registry")
            atomic_write(vdir / "model.tflite", tflite_bytes)
            atomic_write(vdir / "metadata.json", json_bytes(metadata.model_dump(mode="json", exclude_none=True)))
            if selftest is not None:
                atomic_write(vdir / "selftest.json", json_bytes(selftest.model_dump(mode="json")))
            record = {
                "version": version,
                "parent": parent,
                "added": time.time(),
                "actor": actor or self.actor,
                "sha256": metadata.sha256,
                "size": len(tflite_bytes),
            }
            atomic_write(vdir / "record.json", json_bytes(record))  # written last: marks the version complete
            self._audit("add", name, version, actor, sha256=metadata.sha256, parent=parent, size=len(tflite_bytes),
                        **(detail or {}))
        return version

    def set_selftest(self, name: str, version: str, selftest: SelfTest, actor: str | None = None) -> None:
        """Store self-test vectors computed after the add (the deployer caches its own here)."""
        with self._locked():
            vdir = self._require(name, version)
            atomic_write(vdir / "selftest.json", json_bytes(selftest.model_dump(mode="json")))

    def promote(self, name: str, version: str, actor: str | None = None, reason: str | None = None) -> None:
        """Make ``version`` current (the old current becomes previous). A refused version is
        promoted only after ``clear_refused``; promoting the current version is a no-op."""
        with self._locked():
            self._require(name, version)
            state = self._state(name)
            if version in state["refused"]:
                raise RegistryError(
                    f"{name} {version} was refused ({state['refused'][version]}); clear that before promoting"
                )
            if state["history"] and state["history"][-1] == version:
                return
            previous = state["history"][-1] if state["history"] else None
            state["history"].append(version)
            self._save_state(name, state)
            self._audit("promote", name, version, actor, previous=previous, reason=reason)

    def rollback(self, name: str, actor: str | None = None, reason: str | None = None) -> str:
        """Drop the current version from the history; return the version that is current again."""
        with self._locked():
            state = self._state(name)
            if len(state["history"]) < 2:
                raise RegistryError(f"model {name} has no previous version to roll back to")
            dropped = state["history"].pop()
            self._save_state(name, state)
            self._audit("rollback", name, state["history"][-1], actor, rolled_back=dropped, reason=reason)
            return state["history"][-1]

    def mark_refused(self, name: str, version: str, reason: str, actor: str | None = None) -> None:
        """Record that ``version`` must not go to the fleet (failed canary, refused by devices)."""
        with self._locked():
            self._require(name, version)
            state = self._state(name)
            state["refused"][version] = reason[:500]
            self._save_state(name, state)
            self._audit("refuse", name, version, actor, reason=reason[:500])

    def clear_refused(self, name: str, version: str, actor: str | None = None) -> None:
        with self._locked():
            state = self._state(name)
            if state["refused"].pop(version, None) is not None:
                self._save_state(name, state)
                self._audit("clear_refused", name, version, actor)

    def next_deploy_seq(self, name: str) -> int:
        """The ``seq`` for the next manifest of ``name``: above every one handed out before.

        Edges refuse a manifest whose seq is not above the newest they
        recorded (a replayed old manifest). The counter never goes below the
        clock in milliseconds, so a registry rebuilt from scratch still
        outranks what the fleet has seen (given a clock that is not behind).
        """
        path = self._model_dir(name) / "deploy_seq.json"
        with self._locked():
            last = json.loads(path.read_text(encoding="utf-8"))["last"] if path.exists() else 0
            seq = max(int(last) + 1, int(time.time() * 1000))
            atomic_write(path, json_bytes({"last": seq}))
        return seq

    def note(self, name: str, version: str | None, action: str, actor: str | None = None, **detail: Any) -> None:
        """Append any other audited event (e.g. ``deploy`` with its targets)."""
        with self._locked():
            self._audit(action, name, version, actor, **detail)
