"""One way to run a component as a real process: ``python -m edgeloop.cli ...`` with a log file.

Used by the tests, the demos, the fault rigs and the benchmarks, so every rig
starts, stops, kills and measures processes the same way:

- ``start()`` appends a ``===== start N`` header to the log and can be called
  again after ``kill()`` (the reliability rig restarts crashed processes);
- ``terminate()`` is SIGTERM (the component drains), then SIGKILL after a
  timeout; ``kill()`` is SIGKILL, as in a crash or a power cut;
- ``final_stats()`` reads the counters the last run logged when it stopped;
- ``run()`` (and ``run_cli()``) runs a one-shot command (``config check``, ``model info``,
  ``devices camera`` on a file) to completion, its output captured as text;
- ``cpu_seconds()`` and ``peak_rss_mb()`` read ``/proc`` (the benchmarks).

Each process gets its own session, so a Ctrl-C meant for the rig does not
reach it: the rig decides when its processes stop.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path
from collections.abc import Mapping
from typing import IO

REPO = Path(__file__).resolve().parents[1]


class CliProcess:
    """``python -m MODULE ARGS`` (the edgeloop CLI by default), output appended to ``log_path``.

    ``env`` is added to the environment; ``pipe_stdout`` keeps stdout apart from
    the log (readable through ``stdout``) for programs that answer on it.
    """

    def __init__(self, args: list[str], log_path: Path | None, *, env: dict[str, str] | None = None,
                 module: str = "edgeloop.cli", pipe_stdout: bool = False, program: list[str] | None = None,
                 cwd: Path = REPO, base_env: Mapping[str, str] | None = None) -> None:
        """``program`` replaces ``python -m MODULE`` (e.g. the ``edgeloop`` console script of another venv);
        ``base_env`` replaces this process's environment as the one ``env`` is added to. ``log_path`` may be
        None for a process that is only ``run()``."""
        self.args = list(args)
        self.log_path = None if log_path is None else Path(log_path)
        self.env = {**(os.environ if base_env is None else base_env), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.module = module
        self.program = list(program) if program else [sys.executable, "-m", module]
        self.cwd = cwd
        self.pipe_stdout = pipe_stdout
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> CliProcess:
        if self.log_path is None:
            raise RuntimeError(f"{self}: start() needs a log_path")
        if self.alive():
            raise RuntimeError(f"{self} already running (pid {self.proc.pid})")
        with open(self.log_path, "a") as log:
            log.write(f"\n===== start {self.starts + 1}: {' '.join(map(str, self.program[-1:]))} {' '.join(self.args)}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [*self.program, *self.args], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.pipe_stdout else log, stderr=log if self.pipe_stdout else subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        return self._running().pid

    @property
    def stdout(self) -> IO[bytes]:
        """The process's stdout (``pipe_stdout=True`` only)."""
        if self.proc is None or self.proc.stdout is None:
            raise RuntimeError(f"{self}: stdout is not piped")
        return self.proc.stdout

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last run; None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye. Idempotent, for ``finally`` blocks."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the component drains), SIGKILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def run(self, timeout: float = 120.0, input: str | None = None) -> subprocess.CompletedProcess:
        """Run to completion (no log file, no new session): exit code, stdout and stderr as text."""
        return subprocess.run(
            [*self.program, *self.args], cwd=self.cwd, env=self.env, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def final_stats(self) -> dict:
        """The counters the last run logged on SIGTERM (``bridge stopped: {...}``, ``edge <node> stopped:
        {...}``) as a dict; {} if that run did not stop cleanly."""
        last = self.log().rsplit("===== start", 1)[-1]
        for line in reversed(last.splitlines()):
            if " stopped: {" in line:
                return ast.literal_eval(line.split(" stopped: ", 1)[1])
        return {}

    def cpu_seconds(self) -> float:
        """utime + stime of the running process and its live children (the edge's ``workers:``), from /proc."""
        return sum(_alive_or_zero(cpu_seconds, pid) for pid in [self.pid, *descendants(self.pid)])

    def peak_rss_mb(self) -> float:
        """Peak resident set size (``VmHWM``) of the running process plus each live child's, in MB."""
        return sum(_alive_or_zero(peak_rss_mb, pid) for pid in [self.pid, *descendants(self.pid)])

    def _running(self) -> subprocess.Popen:
        if self.proc is None:
            raise RuntimeError(f"{self} was never started")
        return self.proc

    def __repr__(self) -> str:
        return f"CliProcess({self.program[-1]} {' '.join(self.args)!r})"


def run_cli(*args: str, timeout: float = 120.0, env: dict[str, str] | None = None,
            module: str = "edgeloop.cli", input: str | None = None) -> subprocess.CompletedProcess:
    """``python -m edgeloop.cli ARGS`` run to completion (``CliProcess.run``), e.g. ``run_cli("config", "check", f)``."""
    return CliProcess(list(args), None, env=env, module=module).run(timeout, input)


def terminate_all(*procs: CliProcess, timeout: float = 60.0) -> list[int | None]:
    """SIGTERM each in turn (each drains before the next is asked); their exit codes."""
    return [proc.terminate(timeout) for proc in procs]


def logs(*procs: CliProcess, chars: int = 3000) -> str:
    """The tail of each process's log under its command line, for assertion messages."""
    return "\n".join(f"--- {proc!r}\n{proc.log_tail(chars)}" for proc in procs)


def descendants(pid: int) -> list[int]:
    """Live child processes of ``pid``, and theirs (/proc/PID/task/TID/children)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def _alive_or_zero(measure, pid: int) -> float:  # noqa: ANN001
    try:
        return measure(pid)
    except (OSError, RuntimeError):
        return 0.0  # exited between the listing and the read


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a live process (``VmHWM`` in /proc/PID/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM for pid {pid}")
