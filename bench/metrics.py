"""Measured values, their summary and the target each one is held to.

A `Metric` collects one number per run and server.  Its summary is the
median of the runs (or the 95th percentile, for login latency), and its
ratio is always sftpjail's summary divided by OpenSSH's, whichever way is
better: a throughput ratio of 1.3 is good, a CPU ratio of 1.3 is not.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

BASELINE = "openssh"
CANDIDATE = "sftpjail"
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class Target:
    """A bound on the ratio, or on sftpjail's own value."""

    bound: float
    at_most: bool
    on_ratio: bool = True

    def describe(self, unit: str) -> str:
        sign = "<=" if self.at_most else ">="
        if self.on_ratio:
            return f"{sign} {self.bound:g}x"
        return f"{sign} {self.bound:g} {unit}"

    def is_met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound


@dataclass
class Metric:
    """One measured quantity for both servers."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    statistic: str = "median"
    target: Target | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, server: str, value: float) -> None:
        self.samples.setdefault(server, []).append(value)

    def summary(self, server: str) -> float | None:
        values = self.samples.get(server)
        if not values:
            return None
        if self.statistic == "p95":
            return percentile(values, 95)
        return statistics.median(values)

    def ratio(self) -> float | None:
        """sftpjail / OpenSSH, or None when either is missing or zero."""

        candidate = self.summary(CANDIDATE)
        baseline = self.summary(BASELINE)
        if candidate is None or not baseline:
            return None
        return candidate / baseline

    def met(self) -> bool | None:
        """Whether the target holds; None without a target or data."""

        if self.target is None:
            return None
        value = self.ratio() if self.target.on_ratio else self.summary(CANDIDATE)
        if value is None:
            return None
        return self.target.is_met(value)

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "statistic": self.statistic,
            "samples": self.samples,
            "summary": {name: self.summary(name) for name in self.samples},
            "ratio": self.ratio(),
            "target": None if self.target is None else self.target.describe(self.unit),
            "met": self.met(),
        }


def percentile(values: list[float], percent: float) -> float:
    """The nearest-rank percentile: a value that was really measured."""

    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def at_least(ratio: float) -> Target:
    return Target(ratio, at_most=False)


def at_most(ratio: float) -> Target:
    return Target(ratio, at_most=True)
