"""bench/rounds.py: the benches' alternating rounds and the spread of their per-round ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from rounds import alternate, ratios, spread, timed, turn_order

pytestmark = pytest.mark.comfyui_independent


def test_every_round_runs_each_variant_once_and_who_goes_first_rotates():
    calls = []

    def variant(name, seconds):
        def run(round_index):
            calls.append((round_index, name))
            return seconds[round_index]

        return run

    times = alternate({"a": variant("a", [9, 1, 2, 3]), "b": variant("b", [9, 10, 20, 30]),
                       "c": variant("c", [9, 5, 6, 7])}, rounds=3, warmup=1)
    assert calls == [(0, "a"), (0, "b"), (0, "c"),
                     (1, "b"), (1, "c"), (1, "a"),
                     (2, "c"), (2, "a"), (2, "b"),
                     (3, "a"), (3, "b"), (3, "c")]
    # the warm-up round's times are dropped, the others kept in round order
    assert times == {"a": [1, 2, 3], "b": [10, 20, 30], "c": [5, 6, 7]}
    assert ratios(times, "b", "a") == [10.0, 10.0, 10.0]
    assert turn_order(["x", "y"], 5) == ["y", "x"]


def test_ratios_pair_the_same_round_not_the_sorted_times():
    times = {"base": [1.0, 4.0, 2.0], "variant": [2.0, 4.0, 1.0]}
    assert ratios(times, "variant", "base") == [2.0, 1.0, 0.5]


def test_spread_median_quartiles_and_range():
    summary = spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (summary.median, summary.q1, summary.q3, summary.low, summary.high, summary.count) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert summary.describe() == "median 3.000x (quartiles 2.000-4.000x, range 1.000-5.000x, 5 rounds)"
    single = spread([1.25])
    assert (single.median, single.q1, single.q3, single.low, single.high) == (1.25,) * 5


def test_the_target_verdict_reads_the_median_and_the_worst_round():
    assert spread([0.9, 1.0, 1.1]).describe(target=1.15).endswith("target <= 1.15x: met by every round")
    assert spread([0.9, 1.0, 1.3]).describe(target=1.15).endswith("met by the median, not by every round")
    assert spread([1.2, 1.3, 1.0]).describe(target=1.15).endswith("missed by the median")


def test_timed_counts_the_step_between_two_syncs():
    events = []
    clock = timed(lambda round_index: events.append(("step", round_index)), sync=lambda: events.append("sync"))
    assert clock(4) >= 0.0
    assert events == ["sync", ("step", 4), "sync"]


def test_no_rounds_is_refused_with_the_numbers_given():
    with pytest.raises(ValueError, match="rounds must be at least 1.*rounds=0"):
        alternate({"a": lambda round_index: 1.0}, rounds=0)
    with pytest.raises(ValueError, match="no values to summarise"):
        spread([])
    with pytest.raises(ValueError, match="'a' has 2 rounds, 'b' 1"):
        ratios({"a": [1.0, 2.0], "b": [1.0]}, "a", "b")
