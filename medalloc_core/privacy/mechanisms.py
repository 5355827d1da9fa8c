"""The privacy mechanisms, in one registry: what each protects, how it charges the ledger, how it is planned and run.

"Where is the DP mechanism?" has one answer: here. Each mechanism is a ``PrivacyMechanism`` with

- ``name``: its spelling in configs and ledgers (``privacy-mechanism = "source"``);
- ``unit``: what one epsilon protects (a patient stay, a training window, a device);
- ``charge``: the ledger item one use spends, and when it is charged (always before any noise);
- ``shipped``: whether a node runs it (only the source release) or it is studied in research code;
- ``calibrate(...)`` -> its plan, and ``apply(...)``, which runs it.

Shipped: **source** (``medalloc_core.privacy.release``): a node's daily counts released once per
patient stay with the Gaussian mechanism; every round after it is post-processing. The node
runs it through ``release_for_node`` below (plan from the ledger's history, charge, draw, store).

Research, beside it, all on the one DP-SGD step (``medalloc_core.privacy.dpsgd``):
**dp-sgd-patient** (stride-sampled, per stay: ``medalloc_core.privacy.patient``),
**dp-sgd-window** (Poisson-sampled windows: ``medalloc_core.forecast.training.train_local``) and
**dp-sgd-device** (the equipment task's per-device DP-SGD: ``medalloc_core.equipment.model``).

Adding a mechanism: subclass ``PrivacyMechanism``, add an instance to ``MECHANISMS``; a node
offers it only once ``shipped`` is true and a task calls it (docs/architecture.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medalloc_core.contract import UnitRecords
from medalloc_core.privacy.accounting import TargetUnreachable, noise_multiplier_for
from medalloc_core.privacy.continuity import PatientContributions, continuation, record_events
from medalloc_core.privacy.dpsgd import DPSGDStep
from medalloc_core.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger
from medalloc_core.privacy.patient import dp_sgd_patient_item
from medalloc_core.privacy.plan import DPPlan
from medalloc_core.privacy.release import ReleasePlan, ReleaseStore, release_records
from medalloc_core.privacy.transaction import commit_release, finish_pending, release_lock

__all__ = [
    "MECHANISMS",
    "SHIPPED_MECHANISM",
    "MechanismNotOffered",
    "PrivacyMechanism",
    "ReleaseColumnsMissing",
    "ReleaseTargetsNotReleased",
    "check_offered",
    "get_mechanism",
    "release_for_node",
]

logger = logging.getLogger(__name__)

SHIPPED_MECHANISM = "source"


class MechanismNotOffered(ValueError):
    """A configuration or request names a privacy mechanism a node does not run."""


class ReleaseColumnsMissing(ValueError):
    """The node's file lacks a column its release covers (or has none of ``release-columns``)."""


class ReleaseTargetsNotReleased(ValueError):
    """A request asks for targets outside the columns this node releases."""


# ----------------------------------------------------------------------------- the interface
class PrivacyMechanism:
    """One privacy mechanism: its name, the unit it protects, its ledger charge, plan and application."""

    name: str = ""
    unit: str = ""
    charge: str = ""
    shipped: bool = False

    def calibrate(self, **kwargs: Any) -> Any:
        """The mechanism's plan (noise for a target epsilon, or from a given noise multiplier)."""
        raise NotImplementedError

    def ledger_item(self, plan: Any) -> tuple[float, float, int]:
        """The accountant item ``(noise_multiplier, sample_rate, steps)`` one use of ``plan`` spends."""
        raise NotImplementedError

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        """Run the mechanism (release the counts, or privatise one step's gradient)."""
        raise NotImplementedError


class SourceRelease(PrivacyMechanism):
    """The shipped mechanism: each (unit, day) of counts released once, Gaussian noise per patient stay."""

    name = SHIPPED_MECHANISM
    unit = "patient stay of at most max-stay-days nights (across at most two units)"
    charge = "(z, 1.0, 1) once per batch of newly released days, mechanism 'source-release', before the draw"
    shipped = True

    def calibrate(self, **kwargs: Any) -> ReleasePlan:
        """``ReleasePlan.calibrate(epsilon=..., delta=..., max_stay_days=...)``."""
        return ReleasePlan.calibrate(**kwargs)

    def ledger_item(self, plan: ReleasePlan) -> tuple[float, float, int]:
        return (plan.noise_multiplier, 1.0, 1)

    def apply(self, records: UnitRecords, plan: ReleasePlan, *, rng: np.random.Generator | None = None) -> UnitRecords:
        """``release_records``: the counts with the plan's noise added."""
        return release_records(records, plan, rng=rng)


class _DPSGD(PrivacyMechanism):
    """Shared by the DP-SGD mechanisms: ``apply`` builds the one DP-SGD step (``privacy.dpsgd``)."""

    def apply(self, params: Any, **kwargs: Any) -> DPSGDStep:
        """The ``DPSGDStep`` over ``params`` (noise_multiplier, max_grad_norm, expected_batch_size, generator)."""
        return DPSGDStep(params, **kwargs)


class PatientDPSGD(_DPSGD):
    """Research: stride-sampled DP-SGD with a patient stay as the unit (``privacy.patient``)."""

    name = "dp-sgd-patient"
    unit = "patient stay of at most max-stay-days nights"
    charge = "(sigma / 4, 1 - (1 - p)^2, steps) per call, before the first step"

    def calibrate(self, *, target_epsilon: float, delta: float, keep_rate: float, steps: int) -> float:  # type: ignore[override]
        """The DP-SGD noise multiplier sigma whose item stays within ``target_epsilon``."""
        z = noise_multiplier_for(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=1.0 - (1.0 - keep_rate) ** 2,
            steps=steps,
        )
        return 4.0 * z

    def ledger_item(self, plan: tuple[float, float, int]) -> tuple[float, float, int]:
        """``plan`` = (noise_multiplier, keep_rate, steps)."""
        sigma, keep, steps = plan
        return dp_sgd_patient_item(noise_multiplier=sigma, keep_rate=keep, steps=steps)


class WindowDPSGD(_DPSGD):
    """Research: Poisson-sampled DP-SGD with a training window as the unit (``forecast.training``)."""

    name = "dp-sgd-window"
    unit = "one training window (L + H days of one unit): NOT a patient"
    charge = "DPPlan.history_item(sigma) = (sigma, q, epochs x steps per epoch) per call, before the first step"

    def calibrate(self, **kwargs: Any) -> DPPlan:
        """``DPPlan(n_examples=..., batch_size=..., epochs=...)``."""
        return DPPlan(**kwargs)

    def ledger_item(self, plan: tuple[DPPlan, float]) -> tuple[float, float, int]:
        """``plan`` = (DPPlan, noise_multiplier)."""
        dp_plan, sigma = plan
        return dp_plan.history_item(sigma)


class DeviceDPSGD(WindowDPSGD):
    """The equipment task's DP-SGD: a device's whole history is one example (``equipment.model``)."""

    name = "dp-sgd-device"
    unit = "one device's inventory row and every event it logged"
    charge = "DPPlan over devices: (sigma, q, steps) per round, before training"
    shipped = True  # the equipment task's nodes run it


MECHANISMS: Mapping[str, PrivacyMechanism] = {
    m.name: m for m in (SourceRelease(), PatientDPSGD(), WindowDPSGD(), DeviceDPSGD())
}


def get_mechanism(name: str) -> PrivacyMechanism:
    """The registered mechanism ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return MECHANISMS[name]
    except KeyError:
        raise KeyError(f"privacy mechanism '{name}' is unknown; known: {', '.join(MECHANISMS)}") from None


def check_offered(name: str) -> PrivacyMechanism:
    """The one check of a forecasting ``privacy-mechanism``: only the source release is offered to nodes.

    Raises ``MechanismNotOffered`` with the message both the coordinator and a node report.
    """
    if name != SHIPPED_MECHANISM:
        raise MechanismNotOffered(
            f"privacy-mechanism '{name}' is not offered; use '{SHIPPED_MECHANISM}' (docs/privacy.md compares "
            "it with patient-level DP-SGD)"
        )
    return MECHANISMS[name]


# ----------------------------------------------------------------------------- the node's source release
def release_plan_for(
    ledger: PrivacyLedger,
    *,
    mechanism: str,
    patient_epsilon: float,
    max_stay_days: int,
    columns: Sequence[str],
    max_admissions: int = 2,
) -> ReleasePlan:
    """The plan of a node's first release: the proposal capped by the budget, sized with the ledger's history.

    ``max_admissions`` 2: one stay (a transfer); under per-patient bounding the node's stays + transfers cap
    (``medalloc_core.privacy.contribution``), with ``max_stay_days`` its nights cap.
    """
    check_offered(mechanism)
    target = min(patient_epsilon, ledger.epsilon_budget)
    try:
        # docs/privacy.md: the noise is the least that keeps everything spent so far plus this
        # release within the target (shares or metrics spent earlier are composed in).
        z = noise_multiplier_for(
            target_epsilon=target,
            delta=ledger.delta,
            sample_rate=1.0,
            steps=1,
            accountant=ledger.accountant,
            history=ledger.history(),
            epsilon_tolerance=1e-4,
        )
    except TargetUnreachable as exc:
        spent = ledger.epsilon_spent()
        raise PrivacyBudgetExceeded(str(exc), projected_epsilon=spent, epsilon_budget=ledger.epsilon_budget) from exc
    return ReleasePlan.from_noise_multiplier(
        z, delta=ledger.delta, max_stay_days=max_stay_days, columns=columns, max_admissions=max_admissions
    )


def _check_release_columns(
    hospital_id: str,
    records: UnitRecords,
    store: ReleaseStore,
    release_columns: Sequence[str],
    targets: Sequence[str],
) -> tuple[str, ...]:
    """Refuse, before anything is spent, a release or a request the node's columns cannot serve.

    The release covers the node's ``release-columns`` that its file has (an admissions-only
    clinic releases admissions alone; the per-stay sensitivity then counts admissions only); a
    stored release keeps the columns it was made with. Targets outside them cannot be trained on.
    Returns the columns a first release would cover.
    """
    present = set(records.count_columns)
    to_release = tuple(c for c in release_columns if c in records.count_columns)
    columns = store.plan.columns if store.plan is not None else to_release
    lost = [c for c in columns if c not in present]
    if not columns or lost:
        logger.error(
            "%s: the file (columns %s) cannot serve the release of %s",
            hospital_id,
            sorted(present),
            list(columns or release_columns),
        )
        raise ReleaseColumnsMissing(f"the file cannot serve the release of {list(columns or release_columns)}")
    unreleased = [t for t in targets if t not in columns]
    if unreleased:
        raise ReleaseTargetsNotReleased(
            f"target(s) {unreleased} are not among the columns this node releases ({', '.join(columns)})"
        )
    return to_release


@dataclass(frozen=True, kw_only=True)
class NodeRelease:
    """What ``release_for_node`` needs from the node and the request (all read before anything is spent)."""

    hospital_id: str
    release_path: Path
    release_columns: Sequence[str]  # the node's release-columns
    targets: Sequence[str]  # the request's targets: each must be released
    mechanism: str  # the request's privacy-mechanism
    patient_epsilon: float  # the request's proposal; capped by the ledger's budget
    max_stay_days: int  # max(the node's, the request's); per patient: the node's max-patient-nights
    run_tag: str
    max_admissions: int = 2  # per stay: 2 (a transfer); per patient: max-patient-stays + max-patient-transfers
    per_patient: bool = False  # the counts were bounded per patient before counting (issue 20)


def release_for_node(
    records: UnitRecords,
    ledger: PrivacyLedger,
    node: NodeRelease,
    *,
    rng: Callable[[], np.random.Generator],
    contributions: PatientContributions | None = None,
) -> UnitRecords:
    """The node's released counts, extended to days not released yet (charged first, then drawn).

    The one public entry to the shipped mechanism on a node: opens the node's ``ReleaseStore``,
    checks the columns, and when ``records`` hold days not released yet, plans the release (once,
    fixed for the life of the store), charges the ledger, then draws the noise from ``rng()`` (the
    OS CSPRNG on a real node) and stores it, as one transaction (``privacy.transaction``: intent,
    spend, counts, commit; an interrupted one is finished first). Raises ``ReleaseColumnsMissing``,
    ``ReleaseTargetsNotReleased``, ``MechanismNotOffered``, ``ReleaseStoreError`` or a
    ``LedgerError`` (budget exceeded included), each before any noise is drawn.
    """
    with release_lock(node.release_path):
        # A release a kill interrupted is finished (or refused, saying why) before anything else:
        # never released a second time (medalloc_core.privacy.transaction).
        finish_pending(node.release_path, ledger, records, rng)
        store = ReleaseStore.open(node.release_path)
        to_release = _check_release_columns(node.hospital_id, records, store, node.release_columns, node.targets)
        missing = store.missing_days(records)
        # A node that keeps going (privacy.continuity): corrections, shrinking data and gaps are told; under
        # per-patient bounding each patient's new counts are cut to what the earlier releases left of the caps.
        found = continuation(
            node.release_path,
            released=store.frame,
            records=records.frame,
            missing=missing,
            columns=store.plan.columns if store.plan is not None else to_release,
            ledger_spends=ledger.spends(),
            contributions=contributions,
        )
        record_events(node.release_path, node.hospital_id, found.events)
        if len(missing):
            missing = found.missing if found.missing is not None else missing
            generator = rng()
            plan = store.plan or release_plan_for(  # fixed for life
                ledger,
                mechanism=node.mechanism,
                patient_epsilon=node.patient_epsilon,
                max_stay_days=node.max_stay_days,
                columns=to_release,
                max_admissions=node.max_admissions,
            )
            frame = missing.sort_values(["unit", "date"]).reset_index(drop=True)
            # intent record, ledger spend, staged counts, commit: one transaction
            commit_release(
                store,
                ledger,
                frame,
                plan,
                rng=generator,
                run_tag=node.run_tag,
                records=records,
                per_patient=node.per_patient,
                epoch=found.epoch,
                staged=found.staged,
            )
            # The node's log at a release says what was released, what the ledger charged and what is
            # left, in one line: the data owner reads it without opening the ledger.
            logger.info(
                "%s: released %d unit-days (%s..%s), noise multiplier %.4g per %s; ledger: epsilon %.3f spent "
                "of %g, %.3f left (delta %g)",
                node.hospital_id,
                len(frame),
                str(frame["date"].min().date()),
                str(frame["date"].max().date()),
                plan.noise_multiplier,
                "patient" if node.per_patient else "STAY",
                ledger.epsilon_spent(),
                ledger.epsilon_budget,
                ledger.remaining(),
                ledger.delta,
            )
            if not node.per_patient:
                from medalloc_core.privacy.contribution import group_epsilons

                figures = group_epsilons(plan.noise_sd, plan.delta, nights=plan.max_stay_days)
                logger.warning(
                    "%s: daily counts without patient ids: epsilon is per STAY; a patient with k stays gets %s",
                    node.hospital_id,
                    ", ".join(f"k={k}: {e:.2f}" for k, e in figures.items()),
                )
        return store.records()
