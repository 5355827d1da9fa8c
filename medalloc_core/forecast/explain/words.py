"""Attributions in plain words: which input series and which stretch of days drive a forecast.

The ``(L, F)`` map is summed into a handful of cells a planner can name — a channel group
(census, admissions, day of week, time of year, ...) × a block of days counted back from the
forecast's origin (the last 7 days, the week before, ...) — and the largest shares become sentences
such as "the last 7 days of census drive most of the P90".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medalloc_core.contract import Frequency

# Channel name (or its prefix) -> the words a planner reads.
_GROUPS: tuple[tuple[str, str], ...] = (
    ("census_scaled", "census"),
    ("admissions_scaled", "admissions"),
    ("discharges_scaled", "discharges"),
    ("dow_", "day of week"),
    ("year_", "time of year"),
    ("holiday", "holidays"),
    ("was_missing", "missing-day flags"),
)
# Equal blocks keep the shares comparable: a week of days, or four weeks of weekly records.
_BLOCK: dict[Frequency, int] = {Frequency.DAILY: 7, Frequency.WEEKLY: 4}
MOST = 0.5  # a group "drives most" of the forecast when it holds at least this share of |attribution|


@dataclass(frozen=True)
class ChannelGroup:
    """One named cell of the summary: a channel group over a block of periods."""

    channels: str  # e.g. "census"
    block: str  # e.g. "last 7 days"
    first_back: int  # 1 = the origin period itself
    last_back: int
    contribution: float  # Σ attributions: beds/patients it adds to (+) or takes from (−) the forecast
    magnitude: float  # Σ |attributions|
    share: float  # magnitude / total magnitude

    @property
    def phrase(self) -> str:
        """'the last 7 days of census', 'days 8–14 back of census'."""
        return f"{self.block} of {self.channels}"


def channel_group(name: str) -> str:
    """The planner's word for an input channel (``census_scaled`` -> ``census``)."""
    for prefix, words in _GROUPS:
        if name == prefix or name.startswith(prefix):
            return words
    return name.removesuffix("_scaled").replace("_", " ")


def _blocks(history: int, frequency: Frequency) -> list[tuple[int, int, str]]:
    """(first, last, words) per block, counted back from the origin (1 = the origin period)."""
    unit = "days" if frequency is Frequency.DAILY else "weeks"
    size = _BLOCK[frequency]
    out = []
    for first in range(1, history + 1, size):
        last = min(first + size - 1, history)
        out.append((first, last, f"the last {last} {unit}" if first == 1 else f"{unit} {first}–{last} back"))
    return out


def group_attributions(
    values: np.ndarray, feature_names: Sequence[str], frequency: Frequency = Frequency.DAILY
) -> list[ChannelGroup]:
    """Sum an ``(L, F)`` attribution map into channel groups × blocks of periods, largest share first."""
    values = np.asarray(values, dtype=float)
    history, n_features = values.shape
    if n_features != len(feature_names):
        raise ValueError(f"{n_features} attribution columns but {len(feature_names)} feature names")
    names: dict[str, list[int]] = {}
    for i, name in enumerate(feature_names):
        names.setdefault(channel_group(name), []).append(i)
    total = float(np.abs(values).sum())
    out = []
    for channels, columns in names.items():
        for first, last, label in _blocks(history, frequency):
            cell = values[history - last : history - first + 1, columns]  # periods first..last back from the origin
            magnitude = float(np.abs(cell).sum())
            out.append(
                ChannelGroup(
                    channels=channels,
                    block=label,
                    first_back=first,
                    last_back=last,
                    contribution=float(cell.sum()),
                    magnitude=magnitude,
                    share=magnitude / total if total > 0 else 0.0,
                )
            )
    return sorted(out, key=lambda g: -g.magnitude)


def _signed(value: float, unit: str) -> str:
    return f"{'+' if value >= 0 else '−'}{abs(value):.1f} {unit}"


def describe(
    groups: Sequence[ChannelGroup],
    *,
    what: str,
    level: str,
    output: float,
    baseline_output: float,
    unit: str,
    top: int = 3,
) -> list[str]:
    """Sentences for a planner, largest driver first.

    Parameters
    ----------
    groups : sequence of ChannelGroup
        From :func:`group_attributions` (largest first).
    what : str
        The explained quantity, e.g. ``"census"``.
    level : str
        The quantile's name, e.g. ``"P90"``.
    output, baseline_output : float
        The explained number for the window and for the baseline window.
    unit : str
        ``"beds"`` or ``"patients"``.
    top : int
        How many groups to name after the headline.
    """
    if not groups or groups[0].magnitude <= 0:
        return [f"The {level} of {what} does not depend on its inputs (every attribution is 0)."]
    lead = groups[0]
    verb = "drive most of" if lead.share >= MOST else "drive the largest part of"
    lines = [
        f"{lead.phrase[0].upper()}{lead.phrase[1:]} {verb} the {level} of {what} "
        f"({lead.share:.0%} of the attribution; {_signed(lead.contribution, unit)} against an average window).",
        f"The {level} of {what}, mean over the forecast days, is {output:.1f} {unit}; "
        f"for an average window of this unit it would be {baseline_output:.1f} "
        f"({_signed(output - baseline_output, unit)}).",
    ]
    rest = [g for g in groups[1 : top + 1] if g.share >= 0.05]
    if rest:
        parts = [f"{g.phrase} ({g.share:.0%}, {_signed(g.contribution, unit)})" for g in rest]
        lines.append("Next: " + "; ".join(parts) + ".")
    for title, key in (("By input series", "channels"), ("By time", "block")):
        totals: dict[str, list[float]] = {}
        for g in groups:
            entry = totals.setdefault(getattr(g, key), [0.0, 0.0])
            entry[0] += g.share
            entry[1] += g.contribution
        ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:4]
        lines.append(
            f"{title}: " + ", ".join(f"{name} {share:.0%} ({_signed(c, unit)})" for name, (share, c) in ranked) + "."
        )
    return lines
