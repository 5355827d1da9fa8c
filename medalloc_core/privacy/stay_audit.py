"""Empirical audit of the patient-level guarantee: canary *stays* through the node's real source release.

m canary stays of N nights each (with their admission) are placed at disjoint (unit, days) of
a synthetic hospital; each is added to the counts independently with probability 1/2 (coins
from their own seeded generator). The counts go through ``release_records`` with the node's
``ReleasePlan`` (the very code a node runs). The auditor knows the hospital's true counts
without canaries (the strongest position: only the release noise hides a stay) and scores each
canary with the Neyman-Pearson statistic of the Gaussian mechanism,
``sum_c <released_c - base_c, canary_c> / sd_c^2``. The one-run bound of Steinke, Nasr and
Jagielski (2023) turns the scores into an epsilon lower bound at the ledger's delta, which must
stay below the ledger's epsilon (soundness); the same canaries through a release with almost
no noise must prove a large epsilon (power). Everything after the release is post-processing,
so no attack on the model or on the replies can beat this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, UnitRecords
from medalloc_core.privacy.audit_stats import OneRunAudit, one_run_audit
from medalloc_core.privacy.release import ReleasePlan, release_records

__all__ = ["StayAudit", "canary_stay_audit"]


@dataclass(frozen=True)
class StayAudit:
    """The outcome: ledger epsilon (what the release claims per stay) and what the attack proves."""

    canaries: int
    ledger_epsilon: float
    audit: OneRunAudit
    auc: float

    @property
    def sound(self) -> bool:
        """The proved lower bound does not exceed the claimed epsilon."""
        return self.audit.epsilon_lower_bound <= self.ledger_epsilon


def canary_stay_audit(
    records: UnitRecords, plan: ReleasePlan, *, canaries: int, seed: int, release_rng: np.random.Generator | None = None
) -> StayAudit:
    """Place ``canaries`` stays of ``plan.max_stay_days`` nights, release, score, bound.

    ``release_rng`` None: the release draws from the OS CSPRNG, as on a node.
    """
    from medalloc_core.privacy.audit_stats import mia_auc

    rng = np.random.default_rng(seed)  # placement and coins only; the release noise is the node's
    N = plan.max_stay_days
    frame = records.frame.sort_values([UNIT, DATE]).reset_index(drop=True)
    slots = []  # (row index of the admission day, unit) with N following days in the same unit
    for _, rows in frame.groupby(UNIT).groups.items():
        rows = np.asarray(rows)
        for start in range(0, len(rows) - N, N + 1):
            slots.append(rows[start : start + N])
    if len(slots) < canaries:
        raise ValueError(f"only {len(slots)} disjoint {N}-night slots in {records.source}; ask for fewer canaries")
    chosen = [slots[i] for i in rng.choice(len(slots), size=canaries, replace=False)]
    included = rng.random(canaries) < 0.5
    base = frame[list(plan.columns)].astype("float64").to_numpy()
    counts = base.copy()
    col = {c: i for i, c in enumerate(plan.columns)}
    contribution = np.zeros((canaries,) + base.shape)
    for k, rows in enumerate(chosen):
        if ADMISSIONS in col:
            contribution[k, rows[0], col[ADMISSIONS]] = 1.0
        if CENSUS in col:
            contribution[k, rows, col[CENSUS]] = 1.0
        if included[k]:
            counts += contribution[k]
    with_canaries = frame.copy()
    with_canaries[list(plan.columns)] = counts
    released = release_records(
        UnitRecords(with_canaries, records.frequency, records.source, "daily"), plan, rng=release_rng
    )
    diff = released.frame.sort_values([UNIT, DATE])[list(plan.columns)].to_numpy() - base
    weight = np.array([1 / plan.noise_sd[c] ** 2 for c in plan.columns])
    scores = np.array([float(np.sum(diff * contribution[k] * weight)) for k in range(canaries)])
    audit = one_run_audit(scores, included, delta=plan.delta)
    return StayAudit(canaries, plan.epsilon_for_stay(N), audit, mia_auc(scores[included], scores[~included]))
