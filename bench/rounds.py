"""Alternating rounds and their spread, shared by the benches.

A bench's variants take turns: every round runs each variant once, in an order that rotates from
round to round (so no variant always runs first, right after another's allocations), in one process,
so whatever else the machine is doing hits every variant alike. A variant's cost is then read as its
ratio to a baseline *within each round*, and those per-round ratios are summarised by their median,
their quartiles and their range (min–max): the range says how far one round can be trusted, the
median is the figure to quote.

    times = alternate({"plain": timed(plain_step), "patched": timed(patched_step)}, rounds=5)
    print(spread(ratios(times, "patched", "plain")).describe(target=1.15))
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

# a variant: given the round's index (0 for the first warm-up round), run once and return its seconds
Variant = Callable[[int], float]


def timed(step: Callable[[int], object], sync: Optional[Callable[[], object]] = None) -> Variant:
    """``step`` as a variant: the wall time of one call, ``sync`` (e.g. ``torch.cuda.synchronize``)
    run before the clock starts and before it stops, so queued device work is counted where it belongs."""

    def run(round_index: int) -> float:
        if sync is not None:
            sync()
        start = time.perf_counter()
        step(round_index)
        if sync is not None:
            sync()
        return time.perf_counter() - start

    return run


def turn_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: ``names`` rotated by one place per round."""
    names = list(names)
    turn = round_index % len(names) if names else 0
    return names[turn:] + names[:turn]


def alternate(variants: Mapping[str, Variant], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each variant in each of ``rounds`` timed rounds, after ``warmup`` untimed ones.

    Round ``i`` (warm-up rounds first, counted from 0) runs every variant once, in ``turn_order``;
    the result lists each variant's times in round order, so ``times[a][k]`` and ``times[b][k]``
    come from the same round.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be at least 1 and warmup at least 0, got rounds={rounds}, warmup={warmup}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + rounds):
        for name in turn_order(tuple(variants), round_index):
            seconds = variants[name](round_index)
            if round_index >= warmup:
                times[name].append(seconds)
    return times


def ratios(times: Mapping[str, Sequence[float]], variant: str, baseline: str) -> list[float]:
    """``variant`` / ``baseline`` in each round."""
    if len(times[variant]) != len(times[baseline]):
        raise ValueError(f"{variant!r} has {len(times[variant])} rounds, {baseline!r} {len(times[baseline])}")
    return [v / b for v, b in zip(times[variant], times[baseline])]


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and range of a few numbers (one per round)."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    count: int

    def describe(self, target: Optional[float] = None, unit: str = "x") -> str:
        """``median 1.032x (quartiles 1.010-1.050x, range 0.980-1.120x, 5 rounds)``, and against a
        target ratio (lower is better) whether the median, and every round, is within it."""
        text = (f"median {self.median:.3f}{unit} (quartiles {self.q1:.3f}-{self.q3:.3f}{unit}, "
                f"range {self.low:.3f}-{self.high:.3f}{unit}, {self.count} rounds)")
        if target is None:
            return text
        if self.high <= target:
            verdict = "met by every round"
        elif self.median <= target:
            verdict = "met by the median, not by every round"
        else:
            verdict = "missed by the median"
        return f"{text}; target <= {target:.2f}{unit}: {verdict}"


def spread(values: Sequence[float]) -> Spread:
    """The ``Spread`` of ``values``; quartiles by the inclusive method (they lie within the range)."""
    values = sorted(values)
    if not values:
        raise ValueError("no values to summarise: run at least one round")
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, values[0], values[-1], len(values))
