"""The reconnect policy (edgeloop/backoff.py) with a seeded RNG and a fake clock: full jitter that grows
to the cap, no reset while connections are refused or short-lived, a reset after a stable one."""

from __future__ import annotations

import random

import pytest

from edgeloop.backoff import ReconnectBackoff
from edgeloop.mqttconfig import MqttSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock, seed: int = 7, base: float = 0.5, cap: float = 8.0, stable: float = 10.0) -> ReconnectBackoff:
    return ReconnectBackoff(base, cap, stable, rng=random.Random(seed), clock=clock)


def test_full_jitter_ceilings_double_up_to_the_cap_and_delays_are_uniform_below_them():
    clock = Clock()
    p = policy(clock)
    reference = random.Random(7)
    ceilings = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for n, ceiling in enumerate(ceilings):
        delay = p.next_delay()
        assert p.history[-1].attempt == n and p.history[-1].ceiling_s == ceiling
        assert delay == reference.uniform(0.0, ceiling)  # exactly the seeded draw: no rounding, no floor
        assert 0.0 <= delay <= ceiling
        clock.now += delay
    assert p.attempt == len(ceilings)


def test_refused_connections_never_reset_the_count():
    clock = Clock()
    p = policy(clock)
    for _ in range(20):  # TCP refused, CONNACK refused, closed before CONNACK: no connected() at all
        clock.now += p.next_delay() + 0.01
    assert p.attempt == 20 and p.resets == 0
    assert p.history[-1].ceiling_s == 8.0


def test_an_accepted_connection_that_drops_before_stable_s_does_not_reset():
    clock = Clock()
    p = policy(clock, stable=10.0)
    for _ in range(4):
        p.next_delay()
    p.connected()
    clock.now += 9.99  # accepted, then dropped: e.g. a client-id clash or a session the broker closes
    p.next_delay()
    assert p.history[-1].attempt == 4 and p.resets == 0


def test_a_stable_connection_resets_the_count():
    clock = Clock()
    p = policy(clock, stable=10.0)
    for _ in range(6):
        p.next_delay()
    p.connected()
    clock.now += 10.0
    p.next_delay()
    assert p.history[-1].attempt == 0 and p.history[-1].ceiling_s == 0.5
    assert p.attempt == 1 and p.resets == 1
    # ... and the next failure without a stable connection grows again from there.
    p.next_delay()
    assert p.history[-1].attempt == 1 and p.resets == 1


def test_a_connection_stable_long_ago_does_not_reset_a_later_outage():
    clock = Clock()
    p = policy(clock, stable=1.0)
    p.connected()
    clock.now += 100
    p.next_delay()  # reset here (stable), attempt 0
    for _ in range(5):
        clock.now += 100  # long outage of refusals: the old connection must not count again
        p.next_delay()
    assert [d.attempt for d in p.history] == [0, 1, 2, 3, 4, 5]


def test_huge_attempt_counts_stay_at_the_cap():
    p = policy(Clock())
    p.attempt = 5000
    assert p.next_delay() <= 8.0 and p.history[-1].ceiling_s == 8.0


@pytest.mark.parametrize(("base", "cap", "stable"), [(0, 1, 1), (1, 0, 1), (1, 1, -1)])
def test_bad_parameters_are_refused(base, cap, stable):
    with pytest.raises(ValueError):
        ReconnectBackoff(base, cap, stable)


def test_with_the_default_settings_a_minute_of_refusals_is_a_dozen_attempts_not_sixty():
    """The measured bug: an edge refused by the broker retried once a second (60 a minute)."""
    defaults = MqttSettings()
    counts = []
    for seed in range(1000):
        clock = Clock()
        start = clock.now
        p = ReconnectBackoff(defaults.reconnect_min_s, defaults.reconnect_max_s, defaults.reconnect_stable_s,
                             rng=random.Random(seed), clock=clock)
        attempts = 1  # the first one is immediate; each refusal then waits its draw (and takes no time here)
        while True:
            clock.now += p.next_delay()
            if clock.now - start > 60:
                break
            attempts += 1
        counts.append(attempts)
    assert max(counts) <= 15 and sum(counts) / len(counts) < 10


def test_settings_refuse_a_cap_below_the_base():
    with pytest.raises(ValueError, match="reconnect_max_s must be >= reconnect_min_s"):
        MqttSettings(reconnect_min_s=10, reconnect_max_s=5)
