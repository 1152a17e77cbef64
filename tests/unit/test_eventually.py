"""``lab.servers.eventually``: the one polling helper of the tests, rigs and benchmarks.

A wait on a dead process must fail at the next poll, with the process's exit code and log,
not at the timeout (which in the e2e tier is a minute or more).
"""

from __future__ import annotations

import sys

import pytest

from lab.procs import CliProcess
from lab.servers import eventually


def sleeper(tmp_path) -> CliProcess:
    """A real process that prints a line and then waits to be killed."""
    code = "print('sleeper up', flush=True); import time; time.sleep(600)"
    return CliProcess([], tmp_path / "sleeper.log", program=[sys.executable, "-c", code]).start()


def test_returns_the_first_truthy_value_and_treats_exceptions_as_not_yet():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("not there yet")
        return {"rows": len(calls)}

    assert eventually(fn, timeout=10, interval=0.001) == {"rows": 3}


def test_times_out_with_the_last_failure_in_the_message():
    with pytest.raises(AssertionError, match=r"no rows \(after 0.05s; last: KeyError\('missing'\)\)"):
        eventually(lambda: {}["missing"], timeout=0.05, interval=0.01, message="no rows")


def test_a_process_that_dies_ends_the_wait_at_the_next_poll(tmp_path):
    proc = sleeper(tmp_path)
    eventually(lambda: "sleeper up" in proc.log(), timeout=30, alive=[proc])
    polls = []

    def fn() -> bool:
        polls.append(1)
        if len(polls) == 3:
            proc.kill()  # SIGKILL; kill() returns once the process is gone
        return False

    with pytest.raises(AssertionError) as info:
        eventually(fn, timeout=60, interval=0.001, message="results stored", alive=[proc])
    assert len(polls) == 3  # not one poll more: the wait ended, it did not run into the 60 s
    text = str(info.value)
    assert text.startswith("results stored: CliProcess(") and "exited with code -9" in text and "sleeper up" in text


def test_a_process_dead_before_the_wait_means_no_poll_at_all(tmp_path):
    proc = sleeper(tmp_path)
    proc.kill()
    polls = []
    with pytest.raises(AssertionError, match="exited"):
        eventually(lambda: polls.append(1), timeout=60, alive=[proc])
    assert polls == []


def test_a_liveness_callable_that_turns_false_ends_the_wait():
    polls = []

    def writer_running() -> bool:
        return len(polls) < 2

    with pytest.raises(AssertionError, match="'writer_running' no longer holds"):
        eventually(lambda: polls.append(1), timeout=60, interval=0.001, alive=[writer_running])
    assert len(polls) == 2
