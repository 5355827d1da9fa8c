"""Do the attributions point at what the model actually uses? The deletion curve.

Replace ("delete") the input cells one block at a time with their baseline value, in the
order of the attributions (largest |attribution| first), and watch how far the explained
number moves from its value on the untouched window. Do the same in random orders. If the
attributions are faithful, deleting the top-attributed cells moves the forecast more than
deleting random ones: the attribution curve lies above the random one, and the area under it
is larger. A check that can fail: attributions that ignore the model (random, reversed, or
from another model) do not pass it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medalloc_core.forecast.explain.attribution import ForecastFunction


@dataclass(frozen=True)
class DeletionCurve:
    """|f(x_k) − f(x)| after deleting the first ``fractions[k]`` of the cells, in each order.

    ``attributed``: in the attribution order; ``random``: mean over ``random_orders`` random
    orders (``random_spread``: their standard deviation); ``reversed``: smallest |attribution|
    first. All in the forecast's unit (beds/patients).
    """

    fractions: np.ndarray
    attributed: np.ndarray
    random: np.ndarray
    random_spread: np.ndarray
    reversed: np.ndarray
    random_orders: int

    @staticmethod
    def _area(curve: np.ndarray, fractions: np.ndarray) -> float:
        return float(np.trapezoid(curve, fractions))

    @property
    def area_attributed(self) -> float:
        """Area under the attribution-order curve (beds × fraction deleted)."""
        return self._area(self.attributed, self.fractions)

    @property
    def area_random(self) -> float:
        """Area under the mean random-order curve."""
        return self._area(self.random, self.fractions)

    @property
    def area_reversed(self) -> float:
        """Area under the reversed-order curve."""
        return self._area(self.reversed, self.fractions)

    @property
    def ratio(self) -> float:
        """area_attributed / area_random: > 1 when the attributions beat chance (inf if random moves nothing)."""
        return self.area_attributed / self.area_random if self.area_random > 0 else float("inf")

    @property
    def passed(self) -> bool:
        """True when deleting the top-attributed cells moves the forecast more than deleting random ones."""
        return self.area_attributed > self.area_random

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (lists of floats)."""
        return {
            "fractions": self.fractions.tolist(),
            "attributed": self.attributed.tolist(),
            "random": self.random.tolist(),
            "random_spread": self.random_spread.tolist(),
            "reversed": self.reversed.tolist(),
            "random_orders": self.random_orders,
            "area_attributed": self.area_attributed,
            "area_random": self.area_random,
            "area_reversed": self.area_reversed,
            "passed": self.passed,
        }


def _curve(
    function: ForecastFunction, x: np.ndarray, baseline: np.ndarray, order: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """|f(x with the first counts[k] cells of ``order`` deleted) − f(x)| for every k; (K,)."""
    flat_x, flat_b = x.reshape(-1), baseline.reshape(-1)
    batch = np.repeat(flat_x[None], len(counts), axis=0)  # (K, L*F)
    for k, n in enumerate(counts):
        cells = order[:n]
        batch[k, cells] = flat_b[cells]
    values = function.values(batch.reshape(len(counts), *x.shape))
    return np.abs(values - values[0])  # counts[0] == 0: the untouched window


def deletion_curve(
    function: ForecastFunction,
    x: np.ndarray,
    baseline: np.ndarray,
    scores: np.ndarray,
    *,
    steps: int = 20,
    random_orders: int = 20,
    seed: int = 0,
) -> DeletionCurve:
    """The deletion curve of ``scores`` (an attribution map ``(L, F)``) against random orders.

    Parameters
    ----------
    function : ForecastFunction
        The explained number.
    x, baseline : np.ndarray
        The window and the values that replace deleted cells, ``(L, F)``.
    scores : np.ndarray
        ``(L, F)`` attributions; cells are deleted in decreasing ``|score|``.
    steps : int
        Points on the curve after the untouched window (default 20: every 5 % of the cells).
    random_orders : int
        Random orders averaged for the reference curve.
    seed : int
        Seeds the random orders (a research check: nothing private depends on it).
    """
    x = np.asarray(x, dtype=np.float32)
    baseline = np.asarray(baseline, dtype=np.float32)
    scores = np.asarray(scores, dtype=float)
    if not (x.shape == baseline.shape == scores.shape):
        raise ValueError(
            f"x, baseline and scores must share one (L, F) shape; got {x.shape}, {baseline.shape}, {scores.shape}"
        )
    if steps < 1 or random_orders < 1:
        raise ValueError(f"steps and random_orders must be >= 1, got {steps}, {random_orders}")
    cells = x.size
    counts = np.unique(np.round(np.linspace(0, cells, steps + 1)).astype(int))
    fractions = counts / cells
    # Ties in |score| (e.g. occlusion blocks) are broken by a fixed permutation, not by position,
    # so a block of equal scores is not always deleted oldest-first.
    rng = np.random.default_rng(seed)
    tie_break = rng.permutation(cells)
    magnitude = np.abs(scores).reshape(-1)
    top_first = np.lexsort((tie_break, -magnitude))
    bottom_first = np.lexsort((tie_break, magnitude))
    attributed = _curve(function, x, baseline, top_first, counts)
    reverse = _curve(function, x, baseline, bottom_first, counts)
    randoms = np.stack([_curve(function, x, baseline, rng.permutation(cells), counts) for _ in range(random_orders)])
    return DeletionCurve(
        fractions=fractions,
        attributed=attributed,
        random=randoms.mean(axis=0),
        random_spread=randoms.std(axis=0),
        reversed=reverse,
        random_orders=random_orders,
    )
