"""Fencing decisions on pure data: who is dead since when, who is due, the evacuation budget,
and the configuration rule that a cut-off host stops its guests before it can be fenced."""

from __future__ import annotations

import pytest

from hvd.cluster.fencing import Budget, due_for_fencing, track_dead
from hvd.config import load_config


def test_the_dead_clock_starts_at_the_first_dead_sighting_and_resets_when_the_host_lives() -> None:
    seen = track_dead({}, {"h1": "alive", "h2": "dead", "h3": "suspect"}, now=10.0)
    assert seen == {"h2": 10.0}
    seen = track_dead(seen, {"h1": "dead", "h2": "dead", "h3": "dead"}, now=15.0)
    assert seen == {"h1": 15.0, "h2": 10.0, "h3": 15.0}
    seen = track_dead(seen, {"h1": "alive", "h2": "dead", "h3": "left"}, now=20.0)
    assert seen == {"h2": 10.0}  # a cleanly stopped host (left) is not fenced: its guests may run


def test_only_hosts_dead_for_the_whole_delay_and_not_fenced_yet_are_due() -> None:
    dead = {"h1": 0.0, "h2": 5.0, "h3": 0.0, "me": 0.0}
    assert due_for_fencing(dead, fenced={"h3"}, now=30.0, delay=30.0, me="me") == ["h1"]
    assert due_for_fencing(dead, fenced=set(), now=35.0, delay=30.0, me="me") == ["h1", "h2", "h3"]
    assert due_for_fencing(dead, fenced=set(), now=29.9, delay=30.0, me="me") == []


def test_the_evacuation_budget_allows_a_burst_then_the_rate() -> None:
    budget = Budget(per_minute=6)
    assert [budget.take(100.0) for _ in range(7)] == [True] * 6 + [False]
    assert not budget.take(105.0)  # half a token back
    assert budget.take(110.0) and not budget.take(110.0)  # one per 10 s


def test_self_fencing_must_come_before_fencing(tmp_path: object) -> None:
    with pytest.raises(Exception, match=r"self_fence_s .* must be shorter than fence_delay_s"):
        load_config(None, {"HVD_FENCING__SELF_FENCE_S": "30", "HVD_FENCING__FENCE_DELAY_S": "30"})
    config = load_config(None, {"HVD_FENCING__SELF_FENCE_S": "2", "HVD_FENCING__FENCE_DELAY_S": "3"})
    assert (config.fencing.self_fence_s, config.fencing.fence_delay_s) == (2.0, 3.0)
