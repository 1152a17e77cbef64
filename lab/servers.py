"""Real servers as subprocesses: mosquitto, influxd 1.x, VictoriaMetrics (no mocks).

Used by the tests, ``make demo`` and the
benchmarks: one implementation of "start a real server, wait until it answers,
stop it". Each server runs on a free 127.0.0.1 port with its files in a given workdir, is
polled until it answers (bounded; on failure the AssertionError carries the tail
of its log), and is stopped with SIGTERM, then SIGKILL after a timeout.
``kill()`` is a plain SIGKILL for fault tests; ``restart()`` keeps the port and
the data dir. Only the standard library is used (urllib for HTTP).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Callable

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def eventually(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition not met", *, alive: Iterable[Any] = ()) -> Any:
    """Poll ``fn`` until it returns something truthy and return that; raise AssertionError otherwise.

    An exception from ``fn`` counts as "not yet" (a server still starting, a row not there yet)
    and is reported with the timeout. What must stay true meanwhile goes in ``alive``: processes
    (anything with ``alive()``, e.g. ``lab.procs.CliProcess``; its exit code and log tail go into
    the failure) or callables returning a bool. They are checked before every poll, and the first
    one that fails ends the wait at once instead of at the timeout.
    """
    watched = list(alive)
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        for thing in watched:
            _check_alive(thing, message)
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the last failure is part of the report
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout}s; last: {last!r})")
        time.sleep(interval)


def _check_alive(thing: Any, message: str) -> None:
    """AssertionError now if ``thing`` (a process with ``alive()`` or a bool callable) is no longer alive."""
    if hasattr(thing, "alive"):
        if not thing.alive():
            code = getattr(thing, "returncode", None)
            tail = thing.log_tail() if hasattr(thing, "log_tail") else ""
            raise AssertionError(f"{message}: {thing!r} exited with code {code} while waiting\n{tail}")
    elif not thing():
        raise AssertionError(f"{message}: {getattr(thing, '__name__', thing)!r} no longer holds")


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0,
         auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request (``auth``: Basic user, password); returns (status, body) for any status instead of
    raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode("ascii"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _binary(name: str) -> str:
    # /usr/sbin is not on a normal user's PATH on Debian, and that is where mosquitto lives.
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not found:
        raise AssertionError(f"{name} not found: run `make deps` to install the test servers")
    return found


class _Server:
    """Process management shared by the servers: start, readiness poll, stop, kill, restart."""

    name = "server"
    scheme = "http"
    start_timeout = 30.0
    stop_timeout = 10.0

    def __init__(self, workdir: str | os.PathLike, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.console_path = self.workdir / f"{self.name}.out"
        self.log_path = self.console_path
        self.proc: subprocess.Popen | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _new_ports(self) -> None:
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in dict.fromkeys([self.log_path, self.console_path]):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(out) or "(no log written)"

    def start(self) -> "_Server":
        if self.running:
            raise AssertionError(f"{self.name} already running (pid {self.proc.pid})")
        for attempt in range(3):
            if self._spawn_and_wait():
                return self
            code = self.proc.poll()
            self.kill()
            # Another process took the port between free_port() and bind(): pick new ones and retry.
            if self._fixed_port or "already in use" not in self.log_tail(5) or attempt == 2:
                break
            self._new_ports()
        why = f"exited with code {code}" if code is not None else f"did not answer within {self.start_timeout}s"
        raise AssertionError(f"{self.name} on {self.host}:{self.port} {why}; log tail:\n{self.log_tail()}")

    def _spawn_and_wait(self) -> bool:
        with open(self.console_path, "ab") as console:
            self.proc = subprocess.Popen(self._command(), stdout=console, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self._ready() and self.proc.poll() is None:
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL if the process has not exited after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout if timeout is not None else self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all, as in a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(self.stop_timeout)

    def restart(self) -> "_Server":
        """Stop (if running) and start again on the same port with the same data dir."""
        self.stop()
        self._fixed_port = True
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port}, workdir={str(self.workdir)!r})"


class Mosquitto(_Server):
    """A mosquitto 2.x broker. With ``persistence`` the in-memory db is saved to the workdir after
    every change (``autosave_on_changes true``, ``autosave_interval 1``), so retained messages and
    queued QoS 1/2 messages survive ``kill()`` once mosquitto has written them.

    ``listener_conf`` replaces the default plain, anonymous listener (e.g. a TLS listener with
    ``require_certificate`` and an ``acl_file``); ``{host}`` and ``{port}`` in it are filled in.
    Such a broker counts as ready when its port accepts TCP connections, since an MQTT probe
    would need its credentials.

    ``user``: the account mosquitto runs as (its ``user`` option). Default: this process's user,
    so a broker started as root keeps access to the workdir; ``"mosquitto"`` is what a packaged
    broker started as root does (it drops privileges before it reads certificates and opens its
    log, so the workdir and those files must be readable by that user)."""

    name = "mosquitto"
    scheme = "mqtt"

    def __init__(self, workdir: str | os.PathLike, port: int | None = None, extra_conf: str = "",
                 persistence: bool = False, listener_conf: str | None = None, user: str | None = None) -> None:
        super().__init__(workdir, port)
        self.user = user or pwd.getpwuid(os.getuid()).pw_name
        self.extra_conf = extra_conf
        self.listener_conf = listener_conf
        self.persistence = persistence
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.db_path = self.workdir / "mosquitto.db"

    def _command(self) -> list[str]:
        conf = [
            # As root, mosquitto would switch to the `mosquitto` user and lose access to the workdir.
            f"user {self.user}",
            *([f"listener {self.port} {self.host}", "allow_anonymous true"] if self.listener_conf is None
              else [self.listener_conf.replace("{host}", self.host).replace("{port}", str(self.port))]),
            f"log_dest file {self.log_path}",
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
            "log_timestamp_format %H:%M:%S",
        ]
        if self.persistence:
            conf += ["persistence true", f"persistence_location {self.workdir}/",
                     "persistence_file mosquitto.db", "autosave_on_changes true", "autosave_interval 1"]
        self.conf_path.write_text("\n".join(conf) + "\n" + self.extra_conf + "\n")
        return [_binary("mosquitto"), "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        if self.listener_conf is not None:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        # MQTT 3.1.1 CONNECT (clean session, keepalive 10, empty client id); expect CONNACK rc 0.
        with socket.create_connection((self.host, self.port), timeout=1.0) as s:
            s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00")
            ok = s.recv(4) == b"\x20\x02\x00\x00"
            s.sendall(b"\xe0\x00")
            return ok


class InfluxDB1(_Server):
    """influxd 1.x (tested with Debian's 1.6.7) with a light generated config.

    ``influxd`` logs only to stderr, so its log is the captured console output. Writes through
    ``/write`` are readable by the next query (no flush needed); a field-type conflict answers 400
    ``partial write: field type conflict`` and drops only the conflicting points.

    ``admin=(user, password)`` turns on ``auth-enabled`` and creates that admin user once the
    server answers (influxd lets the first admin be created without credentials); the helpers
    below then authenticate as it. ``max_values_per_tag`` sets ``[data] max-values-per-tag``.
    """

    name = "influxd"

    def __init__(self, workdir: str | os.PathLike, port: int | None = None,
                 admin: tuple[str, str] | None = None, max_values_per_tag: int | None = None) -> None:
        """``admin``: auth-enabled with this admin user; ``max_values_per_tag``: influxd's ``[data] max-values-per-tag`` (default 100,000): a low one
        shows in seconds what a tag of unbounded cardinality does to a database in production."""
        self.rpc_port = free_port()
        self.max_values_per_tag = max_values_per_tag
        super().__init__(workdir, port)
        self.conf_path = self.workdir / "influxdb.conf"
        self.admin = admin

    def start(self) -> "InfluxDB1":
        super().start()
        if self.admin is not None:
            user, password = self.admin
            # Idempotent, so a restart() with the same data dir passes too.
            status, body = http("POST", f"{self.url}/query?" + urllib.parse.urlencode(
                {"q": f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"}), auth=self.admin)
            if status != 200 or b'"error"' in body:
                raise AssertionError(f"influxd: creating admin {user!r} failed ({status}): {body!r}")
        return self

    def _new_ports(self) -> None:
        super()._new_ports()
        self.rpc_port = free_port()

    def _command(self) -> list[str]:
        d = self.workdir
        self.conf_path.write_text(f"""\
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d / 'meta'}"
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
{"" if self.max_values_per_tag is None else f"  max-values-per-tag = {self.max_values_per_tag}"}
[http]
  bind-address = "{self.host}:{self.port}"
  auth-enabled = {'true' if self.admin else 'false'}
  log-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
""")
        return [_binary("influxd"), "-config", str(self.conf_path)]

    def _ready(self) -> bool:
        return http("GET", f"{self.url}/ping", timeout=1.0)[0] == 204

    def query(self, q: str, db: str | None = None) -> dict:
        """Run InfluxQL via ``POST /query`` and return the parsed JSON; raise on any error field."""
        params = {"q": q, **({"db": db} if db else {})}
        status, body = http("POST", f"{self.url}/query?" + urllib.parse.urlencode(params), auth=self.admin)
        data = json.loads(body or b"{}")
        errors = [data.get("error")] + [r.get("error") for r in data.get("results", [])]
        if status != 200 or any(errors):
            raise AssertionError(f"influxdb query {q!r} failed ({status}): {next(filter(None, errors), body)}")
        return data

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def write(self, lines: str | bytes, db: str, precision: str = "ns") -> None:
        """Line protocol through ``POST /write``; raise unless the server answers 204."""
        body = lines.encode() if isinstance(lines, str) else lines
        url = f"{self.url}/write?" + urllib.parse.urlencode({"db": db, "precision": precision})
        status, resp = http("POST", url, body, auth=self.admin)
        if status != 204:
            raise AssertionError(f"influxdb write failed ({status}): {resp.decode(errors='replace')}")

    def points(self, q: str, db: str) -> list[dict]:
        """Rows of every series as dicts of column -> value, with the series tags merged in."""
        rows = []
        for result in self.query(q, db).get("results", []):
            for series in result.get("series", []):
                for values in series.get("values", []):
                    rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values))})
        return rows


class VictoriaMetrics(_Server):
    """Single-node VictoriaMetrics (Debian's 1.79.5), the real server behind the InfluxDB v2 write path.

    Line protocol on ``/write`` or ``/api/v2/write`` (what influxdb-client sends): field ``f`` of
    measurement ``m`` becomes metric ``m_f``, tags become labels; ``?db=X`` adds label ``db="X"``,
    ``bucket``/``org`` add nothing. Every value is a float64: ints as numbers, bools as 1/0, and
    string fields parsed best-effort as numbers -- ``"3.5"`` is 3.5, ``"abc"`` and ``""`` are
    silently 0. Timestamps are trimmed to milliseconds. A malformed line is logged and skipped,
    yet the write still answers 204. A sample is not searchable at once: it waits about 1s in a
    raw-row buffer, then about 10s more unless ``/internal/force_flush`` is called, so read with
    ``eventually(lambda: vm.export(...))`` -- ``export()`` flushes first and then usually sees
    data written about a second earlier.
    """

    name = "victoria-metrics"

    def __init__(self, workdir: str | os.PathLike, port: int | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        super().__init__(workdir, port)
        #: ``(user, password)``: HTTP Basic auth on every endpoint but /health and /ping (``-httpAuth.*``);
        #: change it and ``restart()`` to revoke or restore access.
        self.auth = auth

    def _command(self) -> list[str]:
        auth = [f"-httpAuth.username={self.auth[0]}", f"-httpAuth.password={self.auth[1]}"] if self.auth else []
        return [
            _binary("victoria-metrics"),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",  # queries see the newest samples, not only those >30s old
            "-search.disableCache",  # no stale cached responses between writes in one test
            "-memory.allowedBytes=256MiB",
            "-loggerLevel=WARN",
            *auth,
        ]

    def _ready(self) -> bool:
        status, body = http("GET", f"{self.url}/health", timeout=1.0)
        return status == 200 and body.strip() == b"OK"

    def flush(self) -> None:
        """Make every ingested sample searchable now."""
        status, body = http("GET", f"{self.url}/internal/force_flush", auth=self.auth)
        if status != 200:
            raise AssertionError(f"victoria-metrics force_flush failed ({status}): {body!r}")

    def export(self, match: str) -> list[dict]:
        """Series matching a selector (e.g. ``'{__name__=~"m_.*"}'``) as dicts with metric/values/timestamps."""
        self.flush()
        status, body = http("GET", f"{self.url}/api/v1/export?" + urllib.parse.urlencode({"match[]": match}),
                            auth=self.auth)
        if status != 200:
            raise AssertionError(f"victoria-metrics export {match!r} failed ({status}): {body!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]
