"""The DP-SGD plan of one training call: sampling rate, steps and expected batch, derived in one place.

Training, the ledger's projection, noise calibration for a target epsilon and the local-only
comparison all need the same three numbers for the same data; computing them anywhere else
lets the accounted spend drift from what training really does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class DPPlan:
    """Poisson-sampled DP-SGD over ``n_examples`` with an expected batch of about ``batch_size``.

    Parameters
    ----------
    n_examples : int
        Training examples (windows) the sampler draws from.
    batch_size : int
        Requested batch size; the Poisson rate is ``1 / ceil(n_examples / batch_size)``.
    epochs : int
        Passes over the data; one pass is ``int(1 / sample_rate)`` Poisson batches, exactly
        as Opacus' ``UniformWithReplacementSampler`` counts them.
    """

    n_examples: int
    batch_size: int
    epochs: int

    def __post_init__(self) -> None:
        for name in ("n_examples", "batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DPPlan.{name} must be a whole number >= 1, got {value!r}")

    @property
    def sample_rate(self) -> float:
        """Probability that one example is in one step's batch."""
        return 1.0 / math.ceil(self.n_examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Poisson batches per epoch (Opacus' ``int(1 / q)``, which float rounding can make one less)."""
        return int(1 / self.sample_rate)

    @property
    def steps(self) -> int:
        """Noisy steps of the whole call."""
        return self.epochs * self.steps_per_epoch

    @property
    def expected_batch_size(self) -> int:
        """Divisor of each step's noisy gradient sum, as Opacus' ``make_private`` computes it."""
        return int(self.n_examples / math.ceil(self.n_examples / self.batch_size))

    def history_item(self, noise_multiplier: float) -> tuple[float, float, int]:
        """The accountant history item ``(noise_multiplier, sample_rate, steps)`` of this plan."""
        return (float(noise_multiplier), self.sample_rate, self.steps)
