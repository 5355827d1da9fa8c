"""Demand forecasting as a federated task: the shared forecaster, each round's proposal, a node's private round.

The task MedAlloc began with, on the task interface. Its messages are the Flower defaults
(``train`` / ``evaluate``) and :mod:`medalloc_core.protocol`'s instructions and replies,
unchanged, so a forecasting federation speaks exactly the wire it spoke before tasks existed.
Its run-config keys are the top-level ones (``history``, ``horizon``, ``targets``, ``model``,
``hidden``, ``patient-epsilon``, ...); a node serves it with ``data-path``, ``ledger-path`` and
``privacy-epsilon-budget`` (per patient). Its ``data-path`` may be a contract file, an OMOP CDM
(SQLite file, database URL or export folder) or a FHIR export, read with the site's
``data-mapping`` (``data-format`` says which; docs/data.md).

A node's one privacy mechanism is the *source release*: each day's counts are released once
through the Gaussian mechanism, calibrated per patient stay, charged to the node's
patient-level ledger (opened through its node state record, so a deleted or replaced ledger is
noticed) before any noise is drawn, with noise from the OS CSPRNG. Training and evaluation then
read only the released counts: every round is post-processing and spends nothing. Replies carry
only the fields of ``protocol.REPLY_ALLOW_LIST``; refusals one of ``protocol.REFUSAL_REASONS``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd
import torch

from medalloc_core import protocol
from medalloc_core.contract import ADMIT_TIME, DATE, DISCHARGE_TIME, UNIT, DataContractError, Frequency
from medalloc_core.forecast.features import WindowSpec, federation_window_spec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, ForecasterNet, build_from_arrays, build_model, state_arrays
from medalloc_core.forecast.region import region_from_text, totals_record, with_region
from medalloc_core.forecast.region_store import REGION_CONTEXT, region_path, store_region
from medalloc_core.forecast.training import TrainConfig, adaptive_batch_size, train_local
from medalloc_core.model_io import write_model_files
from medalloc_core.privacy.continuity import PatientContributions
from medalloc_core.privacy.contribution import PatientCaps, public_counts
from medalloc_core.privacy.ledger import LedgerConfigMismatch, LedgerError, PrivacyLedger
from medalloc_core.privacy.mechanisms import (
    MechanismNotOffered,
    NodeRelease,
    ReleaseColumnsMissing,
    ReleaseTargetsNotReleased,
    release_for_node,
)
from medalloc_core.privacy.node_state import open_node_ledger
from medalloc_core.privacy.release import ReleaseStore, ReleaseStoreError, secure_generator
from medalloc_core.privacy.source_registry import check_source_ledger
from medalloc_core.privacy.transaction import release_pending
from medalloc_core.protocol import (
    EVAL_METRIC_KEYS,
    TRAIN_METRIC_KEYS,
    EvaluateInstruction,
    EvaluateReply,
    ProtocolError,
    Refusal,
    Scalar,
    TrainInstruction,
    TrainReply,
)
from medalloc_core.simulation import PATIENT_EPSILON
from medalloc_core.sources import DataSource, MappingError, SourceMapping
from medalloc_core.sources.incremental import count_cache_folder
from medalloc_core.tasks.base import (
    FederatedTask,
    NodeReply,
    NodeTask,
    SimulationRun,
    TaskModel,
    TaskRefused,
    ledger_refusal,
)
from medalloc_core.tasks.forecasting.hints import data_hint, ledger_hint, window_hint
from medalloc_core.tasks.forecasting.local import LocalData, evaluate_local, load_daily
from medalloc_core.tasks.forecasting.secure_region import region_from_total, region_share, secure_totals

logger = logging.getLogger(__name__)

# What a region folder may hold per hospital: contract files, OMOP SQLite databases, FHIR NDJSON
# files and Bundles (.fhir.json), and export folders (OMOP tables, FHIR Bulk Data).
DATA_SUFFIXES = (".csv", ".parquet", ".sqlite", ".ndjson")

_I = TypeVar("_I", bound=EvaluateInstruction)


def default_release_path(ledger_path: Path) -> Path:
    """Where a node keeps its source release when ``release-path`` is not set: ``<ledger>.released.csv``."""
    return ledger_path.with_name(ledger_path.name + ".released.csv")


def _reason(code: Refusal, **values: Any) -> str:
    """A refusal's detail: the code's fixed text in ``protocol.REFUSAL_REASONS``, never data from the file."""
    return protocol.REFUSAL_REASONS[code].format(**values)


@dataclass(frozen=True)
class ForecastNode:
    """A node's settings for the forecasting task: the common ones and its patient-level keys."""

    hospital_id: str
    data_path: Path
    ledger_path: Path
    epsilon_budget: float
    delta: float
    accountant: str
    max_local_epochs: int
    threads: int
    simulated: bool
    node_state_path: Path
    max_stay_days: int
    release_path: Path
    release_columns: tuple[str, ...]
    data_location: str  # node-config data-path verbatim (a database URL is not a path)
    data_format: str
    data_mapping: Path | None
    # the calendar (calendar-units/-start/-end), per-patient caps (max-patient-*) and proposal bounds
    # (max-proposed-stay-days, min-release-epsilon): medalloc_core.privacy.calendar / .contribution
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def data_display(self) -> str:
        """``data-path`` as it may be logged (a database URL's password hidden)."""
        return DataSource(self.data_location).display

    @classmethod
    def of(cls, node: NodeTask) -> ForecastNode:
        """Read the forecasting keys (``max-stay-days``, ``release-path``, ``release-columns``) from ``node.extra``."""
        extra = node.extra
        release = extra.get("release-path", default_release_path(node.ledger_path))
        columns = str(extra.get("release-columns", "admissions,census"))
        mapping = extra.get("data-mapping")
        assert node.node_state_path is not None
        return cls(
            hospital_id=node.hospital_id,
            data_path=node.data_path,
            ledger_path=node.ledger_path,
            epsilon_budget=node.epsilon_budget,
            delta=node.delta,
            accountant=node.accountant,
            max_local_epochs=node.max_local_epochs,
            threads=node.threads,
            simulated=node.simulated,
            node_state_path=node.node_state_path,
            max_stay_days=int(extra.get("max-stay-days", 14)),
            release_path=Path(str(release)),
            release_columns=tuple(c.strip() for c in columns.split(",") if c.strip()),
            data_location=str(extra.get("data-location", node.data_path)),
            data_format=str(extra.get("data-format", "auto")),
            data_mapping=Path(str(mapping)) if mapping else None,
            settings=dict(extra),
        )


def _source(node: ForecastNode) -> DataSource:
    """The node's data with its site mapping; a bad mapping file is the node's own misconfiguration."""
    try:
        mapping = SourceMapping.from_toml(node.data_mapping) if node.data_mapping else SourceMapping()
    except MappingError as exc:
        logger.error("node configuration: data-mapping: %s", exc)
        raise TaskRefused(Refusal.NODE_MISCONFIGURED, _reason(Refusal.NODE_MISCONFIGURED)) from exc
    try:
        return DataSource(node.data_location, node.data_format, mapping)  # type: ignore[arg-type]
    except ValueError as exc:  # a data-format the node config check let through (a node built in code)
        logger.error("node configuration: data-format: %s", exc)
        raise TaskRefused(Refusal.NODE_MISCONFIGURED, _reason(Refusal.NODE_MISCONFIGURED)) from exc


def _data(node: ForecastNode, spec: WindowSpec) -> tuple[LocalData, PatientCaps | None, PatientContributions | None]:
    """The node's counts on its public calendar, each patient bounded first (with the caps used and each
    patient's counts; None per stay).

    Whether this refuses, and how many windows it gives, depends on the calendar and the request
    only: the raw file's own span and units never reach a reply (docs/privacy.md, "What is public").
    """
    source = _source(node)
    try:
        # a real node keeps its counts beside its ledger and reads only what its source appended since
        counts = None if node.simulated else count_cache_folder(node.ledger_path)
        records, stays = load_daily(source, counts=counts)
    except DataContractError as exc:
        # The problems name rows and values of the hospital's data (and how many there are is a
        # statistic of it too): they stay in the node's log.
        logger.error("%s\n%s", exc, data_hint(node.data_display, node.data_format, node.data_mapping))
        raise TaskRefused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc
    except (OSError, ValueError) as exc:
        logger.error("%s: %s", node.data_display, exc)
        raise TaskRefused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc
    try:
        public, caps, contributions = public_counts(
            records, stays, node.settings, default_nights=node.max_stay_days, research=node.simulated
        )
    except ValueError as exc:  # a calendar or cap setting of the node's own config
        logger.error("node configuration: %s", exc)
        raise TaskRefused(Refusal.NODE_MISCONFIGURED, _reason(Refusal.NODE_MISCONFIGURED)) from exc
    try:
        return LocalData(public, prepare_hospital(public, spec)), caps, contributions
    except ValueError as exc:
        logger.error("%s: %s; %s", node.data_display, exc, window_hint(spec.resolved(Frequency.DAILY)))
        raise TaskRefused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc


def _model(model_config: ForecasterConfig, arrays: Mapping[str, np.ndarray], data: LocalData) -> ForecasterNet:
    if data.dataset.n_features != model_config.n_features or data.dataset.n_targets != model_config.n_targets:
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"the model expects F={model_config.n_features}, T={model_config.n_targets}; the window spec "
                f"gives F={data.dataset.n_features}, T={data.dataset.n_targets}",
            ),
        )
    try:
        return build_from_arrays(model_config, dict(arrays))
    except (ValueError, TypeError) as exc:
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            _reason(Refusal.REQUEST_INVALID, what=f"global arrays do not fit the model ({exc})"),
        ) from exc


# ------------------------------------------------------------------ privacy: ledger, randomness, release
def _ledger(node: ForecastNode) -> PrivacyLedger:
    """The node's patient-level ledger, through its state record; each ledger problem is its own refusal."""
    assert node.node_state_path is not None
    try:
        ledger = open_node_ledger(
            state_path=node.node_state_path,
            hospital_id=node.hospital_id,
            ledger_path=node.ledger_path,
            epsilon_budget=node.epsilon_budget,
            delta=node.delta,
            accountant=node.accountant,
            max_stay_days=node.max_stay_days,
            entry=TASK.node_state_key(node.hospital_id),
        )
        if not node.simulated:  # keyed on the data, in a fixed place: another ledger or hospital-id is noticed
            record = node.settings.get("data-source-record")
            check_source_ledger(
                node.data_location, node.ledger_path, ledger.ledger_id, path=Path(str(record)) if record else None
            )
        return ledger
    except LedgerError as exc:
        hint = ""
        if isinstance(exc, LedgerConfigMismatch):  # name the node-config key to fix (reads the ledger)
            hint = ledger_hint(
                node.ledger_path, accountant=node.accountant, delta=node.delta, epsilon_budget=node.epsilon_budget
            )
        raise ledger_refusal(exc, node.hospital_id, node.ledger_path, _reason, hint=hint) from exc


def _noise_rng(node: ForecastNode, ask: EvaluateInstruction) -> np.random.Generator:
    """The node's DP noise: the OS CSPRNG, unless a *simulated* node is told to be reproducible.

    A real node refuses the switch: whoever knows the seed can subtract the noise, and the
    coordinator chose it (docs/privacy.md, "Randomness").
    """
    if not ask.reproducible_noise:
        return secure_generator()
    if not node.simulated:
        logger.error(
            "%s: the coordinator asked for reproducible (coordinator-known) DP noise; refused", node.hospital_id
        )
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"a real node never uses DP noise the coordinator can recompute ({protocol.REPRODUCIBLE_NOISE})",
            ),
        )
    logger.warning(
        "%s: DP noise from the run's seed: reproducible, NOT private against the coordinator (simulation only)",
        node.hospital_id,
    )
    return np.random.default_rng([ask.seed, zlib.crc32(node.hospital_id.encode())])


MAX_PROPOSED_STAY_KEY, MIN_RELEASE_EPSILON_KEY = "max-proposed-stay-days", "min-release-epsilon"


def _check_proposal(node: ForecastNode, ask: EvaluateInstruction) -> None:
    """Refuse a proposal that would fix a useless plan for the node's life (issue 20), naming the node setting.

    The first release's plan is kept forever: a stay cap of 100000 nights or a tiny epsilon would
    spend the whole budget on noise nobody can learn from.
    """
    most_stay = int(node.settings.get(MAX_PROPOSED_STAY_KEY, 60))
    least_epsilon = float(node.settings.get(MIN_RELEASE_EPSILON_KEY, 0.1))
    if ask.max_stay_days > most_stay:
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"max-stay-days {ask.max_stay_days} is above this node's {MAX_PROPOSED_STAY_KEY} ({most_stay})",
            ),
        )
    if ask.patient_epsilon < least_epsilon:  # the node's own smaller budget is its operator's choice
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"a release at patient-epsilon {ask.patient_epsilon:g} is below this node's "
                f"{MIN_RELEASE_EPSILON_KEY} ({least_epsilon:g}); its plan would be kept for the node's life",
            ),
        )


def _check_store(node: ForecastNode, ledger: PrivacyLedger, caps: PatientCaps | None) -> ReleaseStore:
    """Refuse a store whose plan covers other caps, and a release the ledger charged but the store lost."""
    assert node.release_path is not None
    store = ReleaseStore.open(node.release_path)
    if (
        caps is not None
        and store.plan is not None
        and ((store.plan.max_admissions, store.plan.max_stay_days) != (caps.admissions, caps.nights))
    ):
        logger.error(
            "%s: the stored release covers %d admissions and %d nights per patient; max-patient-stays + "
            "max-patient-transfers = %d and max-patient-nights = %d now: restore the settings it was made with",
            node.hospital_id,
            store.plan.max_admissions,
            store.plan.max_stay_days,
            caps.admissions,
            caps.nights,
        )
        raise TaskRefused(Refusal.LEDGER_CONFIG_MISMATCH, _reason(Refusal.LEDGER_CONFIG_MISMATCH))
    if store.plan is None and any(s.mechanism == "source-release" for entry in ledger.entries() for s in entry.spends):
        # The ledger charged a release the store no longer holds: never silently re-released.
        logger.error(
            "%s: the ledger records a source release but %s is gone; restore it (and its .json) from backup",
            node.hospital_id,
            node.release_path,
        )
        raise TaskRefused(Refusal.LEDGER_CORRUPT, _reason(Refusal.LEDGER_CORRUPT))
    return store


def _released(
    node: ForecastNode,
    ask: EvaluateInstruction,
    ledger: PrivacyLedger,
    data: LocalData,
    run_tag: str,
    caps: PatientCaps | None = None,
    contributions: PatientContributions | None = None,
) -> LocalData:
    """The node's released counts (``privacy.mechanisms.release_for_node``, one transaction: an interrupted
    release is finished first, never released again); each failure its own refusal.

    Under per-patient bounding (``caps``) the release covers the node's own caps, not the request's stay cap.
    """
    assert node.release_path is not None
    release = NodeRelease(
        hospital_id=node.hospital_id,
        release_path=node.release_path,
        release_columns=node.release_columns,
        targets=ask.window_spec.targets,
        mechanism=ask.privacy_mechanism,
        patient_epsilon=ask.patient_epsilon,
        max_stay_days=caps.nights if caps is not None else max(node.max_stay_days, ask.max_stay_days),
        run_tag=run_tag,
        max_admissions=caps.admissions if caps is not None else 2,
        per_patient=caps is not None,
    )
    try:
        # A release a kill interrupted is finished by release_for_node under the plan its intent
        # record fixed (medalloc_core.privacy.transaction); the store is checked once it is whole.
        if not release_pending(node.release_path) and _check_store(node, ledger, caps).plan is None:
            _check_proposal(node, ask)  # only a first release fixes a plan
        records = release_for_node(
            data.records, ledger, release, rng=lambda: _noise_rng(node, ask), contributions=contributions
        )
    except ReleaseColumnsMissing as exc:
        raise TaskRefused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc
    except (ReleaseTargetsNotReleased, MechanismNotOffered) as exc:
        raise TaskRefused(Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=str(exc))) from exc
    except ReleaseStoreError as exc:
        logger.error("%s: %s", node.hospital_id, exc)
        raise TaskRefused(Refusal.LEDGER_CORRUPT, _reason(Refusal.LEDGER_CORRUPT)) from exc
    except LedgerError as exc:
        raise ledger_refusal(exc, node.hospital_id, node.ledger_path, _reason) from exc
    except OSError as exc:  # a full or read-only disk: a spend already made is finished on the next start
        logger.error("%s: %s", node.hospital_id, exc)
        raise TaskRefused(Refusal.NODE_STORAGE_FAILED, _reason(Refusal.NODE_STORAGE_FAILED)) from exc
    try:
        return LocalData(records, prepare_hospital(records, data.dataset.spec))
    except ValueError as exc:
        logger.error("%s: released counts cannot be windowed: %s", node.hospital_id, exc)
        raise TaskRefused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc


def _prepare(
    settings: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray], kind: type[_I]
) -> tuple[ForecastNode, _I, ForecasterNet, LocalData, PrivacyLedger]:
    """What both handlers do first: request, data, model, ledger, release."""
    node = ForecastNode.of(settings)
    try:
        ask = cast(_I, kind.from_dict(request))
    except ProtocolError as exc:
        raise TaskRefused(Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=str(exc))) from exc
    if ask.reproducible_noise:
        _noise_rng(node, ask)  # a real node refuses before touching anything
    reads_region = REGION_CONTEXT in ask.window_spec.context
    region = _region(request) if reads_region else None
    data, caps, contributions = _data(node, ask.window_spec)
    model = _model(ask.model_config, arrays, data)
    if node.simulated:  # a virtual node's ledger folder belongs to the simulation; a real node's operator makes it
        node.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(node.threads)
    ledger = _ledger(node)
    released = _released(node, ask, ledger, data, ask.run_tag, caps, contributions)
    if reads_region and region is None:
        # Under secure sums of the region the coordinator sends the total; the node takes its own share off
        # (medalloc_core.tasks.forecasting.secure_region), read from the release it has just made or reused.
        region = region_from_total(node, request)
    if region is not None:
        logger.info(
            "%s: the region from the coordinator (other nodes' released totals): %d days, %s to %s",
            node.hospital_id,
            len(region),
            region.index.min().date() if len(region) else "-",
            region.index.max().date() if len(region) else "-",
        )
        released = _with_region(node, released, region)
        _keep_region(node, region, ask.run_tag)
    return node, ask, model, released, ledger


# ------------------------------------------------------------------ the region (docs/coordinator.md, "The region")
SHARE_TOTALS_KEY = "share-released-totals"  # node config; default true: a node may refuse to send its totals


def _region(request: Mapping[str, Any]) -> pd.DataFrame | None:
    """The region the coordinator sent (the other nodes' released daily totals); None before it has any.

    A region that is not what ``region_to_text`` writes is the coordinator's malformed request.
    """
    text = request.get(protocol.REGION)
    if text is None:
        return None
    if not isinstance(text, str):
        raise TaskRefused(
            Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=f"'{protocol.REGION}' must be a string")
        )
    try:
        return region_from_text(text, what=f"'{protocol.REGION}'")
    except ValueError as exc:
        raise TaskRefused(Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=str(exc))) from exc


def _with_region(node: ForecastNode, released: LocalData, region: pd.DataFrame) -> LocalData:
    """The released counts with the region's columns joined by date, windowed again (the region channel reads
    each window's region only before its origin: ``features.region_channel``)."""
    records = with_region(released.records, region)
    try:
        return LocalData(records, prepare_hospital(records, released.dataset.spec))
    except ValueError as exc:
        logger.error("%s: released counts with the region cannot be windowed: %s", node.hospital_id, exc)
        raise TaskRefused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc


def _keep_region(node: ForecastNode, region: pd.DataFrame, run_tag: str) -> None:
    """Keep the region beside the release (``<release-path>.region.json``, local): ``medalloc forecast`` reads it
    for a region model, so the hospital's forecast reads the region its rounds read (``forecast.region_store``).

    A failed write is logged, not refused: the round itself does not need the file, and a forecast from a
    stale region says how old it is.
    """
    path = region_path(node.release_path)
    try:
        store_region(path, region, run_tag=run_tag)
    except OSError as exc:
        logger.error(
            "%s: the region could not be kept in %s (%s); forecasts read the one before", node.hospital_id, path, exc
        )


def shares_totals(node: ForecastNode) -> bool:
    """The node's ``share-released-totals`` setting (default true; "false", false or 0 refuse)."""
    value = node.settings.get(SHARE_TOTALS_KEY, True)
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    return bool(value)


def _totals(
    node: ForecastNode, ask: EvaluateInstruction, released: LocalData, request: Mapping[str, Any]
) -> dict[str, dict[str, Any]] | None:
    """The reply's released daily totals (``protocol.RELEASED_TOTALS``) when the run reads the region and the
    node shares them: a sum of its released counts per day, post-processing of the one release (no new epsilon).
    Under secure sums of the region, the days only (``secure_region.secure_totals``)."""
    if REGION_CONTEXT not in ask.window_spec.context or not shares_totals(node):
        return None
    columns = tuple(c for c in node.release_columns if c in released.records.count_columns)
    record = totals_record(released.records, columns)
    return {protocol.RELEASED_TOTALS: secure_totals(request, node.settings, record)}


def run_window_spec(run: Any) -> WindowSpec:
    """The windows every node builds for a run: history, horizon, targets, the held-out validation and test
    days (the rolling-origin evaluation's weeks) and the scaling the model needs (window scaling for the hybrid)."""
    return federation_window_spec(
        history=run.history,
        horizon=run.horizon,
        targets=run.target_list,
        model=run.model,
        val_periods=run.validation_days or None,
        test_periods=run.test_days or None,
        context=tuple(getattr(run, "context_list", ())),
    )


def run_initial_model(run: Any, config: ForecasterConfig) -> ForecasterNet:
    """The global model before round 1: seeded weights, or the public pretrained ones (``init = 'pretrained'``).

    Raises ``PretrainedMismatch`` (a ``ValueError`` naming the setting to change) when the run's
    shape does not fit the public weights.
    """
    if run.init == "pretrained":
        from medalloc_core.forecast.pretrained import load_pretrained

        return load_pretrained(config)
    return build_model(config, seed=run.seed)


def _privacy_fields(run: Any, run_tag: str) -> dict[str, Any]:
    """The patient-level proposal every forecasting instruction carries."""
    return {
        "privacy_mechanism": run.privacy_mechanism,
        "patient_epsilon": run.patient_epsilon,
        "max_stay_days": run.max_stay_days,
        "reproducible_noise": run.simulation_reproducible_noise,
        "seed": run.seed,
        "run_tag": run_tag,
    }


class ForecastingTask(FederatedTask):
    """P10/P50/P90 admissions and census per unit for the next days, trained with DP-SGD (docs/forecasting.md)."""

    name = "forecasting"
    action = "default"
    privacy_unit = "patient"
    evaluates = True
    train_keys = TRAIN_METRIC_KEYS
    evaluate_keys = EVAL_METRIC_KEYS
    reply_allow_list = protocol.REPLY_ALLOW_LIST  # checked on the node before every reply (medalloc_core.replies)
    refusal_reasons = protocol.REFUSAL_REASONS
    default_epsilon = PATIENT_EPSILON
    legacy_model_without_task_key = True  # forecasters' files predate tasks: they name none
    reads_data_sources = True
    rolling_origin_evaluation = True
    data_kind = "unit-records"
    report_layout = "forecast-accuracy"

    # The forecasting task predates tasks: its node keys, ledger files and node-state entries carry no task name.
    @property
    def node_keys(self) -> tuple[str, str, str]:
        return "data-path", "ledger-path", "privacy-epsilon-budget"

    @property
    def ledger_file_suffix(self) -> str:
        return ""

    def node_state_key(self, hospital_id: str) -> str:
        return hospital_id

    def hospital_id_of(self, data_path: Path) -> str:
        return DataSource(str(data_path)).name  # an OMOP/FHIR export's or database's name, a file's stem

    # ------------------------------------------------------------------ coordinator
    def check_run(self, run: Any, options: Any) -> None:
        if run.init == "pretrained":
            from medalloc_core.forecast.pretrained import check_fits

            check_fits(ForecasterConfig.for_spec(run_window_spec(run), model=run.model, hidden=run.hidden))

    def model(self, run: Any, options: Any) -> TaskModel:
        spec = run_window_spec(run)
        config = ForecasterConfig.for_spec(spec, model=run.model, hidden=run.hidden)
        return TaskModel(config, spec, state_arrays(run_initial_model(run, config)))

    def train_instruction(
        self, run: Any, options: Any, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        assert isinstance(model.config, ForecasterConfig) and isinstance(model.spec, WindowSpec)
        return TrainInstruction(
            server_round=server_round,
            model_config=model.config,
            window_spec=model.spec,
            local_epochs=run.local_epochs,
            batch_size=run.batch_size,
            lr=run.lr,
            proximal_mu=run.proximal_mu if run.strategy == "fedprox" else 0.0,
            **_privacy_fields(run, run_tag),
        ).to_dict()

    def evaluate_instruction(
        self, run: Any, options: Any, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        assert isinstance(model.config, ForecasterConfig) and isinstance(model.spec, WindowSpec)
        return EvaluateInstruction(
            server_round=server_round,
            model_config=model.config,
            window_spec=model.spec,
            **_privacy_fields(run, run_tag),
        ).to_dict()

    def parse_model(self, config: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[ForecasterConfig, WindowSpec]:
        return ForecasterConfig.from_dict(dict(config)), WindowSpec.from_dict(dict(spec))

    def write_model(
        self, path: Path, arrays: Mapping[str, np.ndarray], model: TaskModel, extra: Mapping[str, Any]
    ) -> Path:
        assert isinstance(model.config, ForecasterConfig) and isinstance(model.spec, WindowSpec)
        return write_model_files(path, arrays, config=model.config, spec=model.spec, extra=extra)

    # ------------------------------------------------------------------ node
    def train(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        """Train the global model on this node's released counts: post-processing of its one source release."""
        settings, ask, model, released, ledger = _prepare(node, request, arrays, TrainInstruction)
        epochs = min(ask.local_epochs, settings.max_local_epochs)
        # The batch order needs no secrecy (no noise is added here): a reproducible simulation
        # repeats it, a real node draws it from its own generator.
        order = np.random.default_rng([ask.seed, ask.server_round]) if ask.reproducible_noise else secure_generator()
        seed = int(order.integers(2**31))
        train = released.dataset.train
        # A few windows in one batch would give one step per epoch; the batch size costs no
        # privacy under the source release, so it adapts (logged).
        batch_size = adaptive_batch_size(len(train), ask.batch_size)
        result = train_local(
            model,
            train,
            config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=ask.lr, fedprox_mu=ask.proximal_mu, seed=seed),
            global_params=[p.detach().clone() for p in model.parameters()] if ask.proximal_mu > 0 else None,
        )
        plan = ReleaseStore.open(settings.release_path).plan
        epsilon, left = ledger.epsilon_spent(), ledger.remaining()
        logger.info(
            "%s round %s: %s windows, loss %.4f on released counts, node patient epsilon %.3f (%.3f left)",
            settings.hospital_id,
            ask.server_round,
            result.num_examples,
            result.loss,
            epsilon,
            left,
        )
        reply = TrainReply(
            num_examples=int(result.num_examples),
            train_loss=float(result.loss),
            epsilon=float(epsilon),
            epsilon_budget_left=float(left),
            noise_multiplier=float(plan.noise_multiplier if plan else 0.0),
            local_epochs_used=float(epochs),
            delta=float(ledger.delta),
            stay_cap_days=float(plan.max_stay_days if plan else settings.max_stay_days),
        )
        return NodeReply(reply.metrics(), state_arrays(model), _totals(settings, ask, released, request))

    def region_share(self, node: NodeTask, request: Mapping[str, Any]) -> NodeReply:
        """The node's vector for the SecAgg+ sum of the region (``secure_region.region_share``): no epsilon."""
        return region_share(ForecastNode.of(node), node, request)

    def evaluate(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        """Score the global model on this node's RELEASED test split: post-processing, nothing charged."""
        settings, ask, model, released, _ = _prepare(node, request, arrays, EvaluateInstruction)
        scores = evaluate_local(model, released.dataset)
        reply = EvaluateReply(
            num_examples=int(scores["n"]),
            eval_loss=scores["loss"],
            eval_mae=scores["mae"],
            eval_wape=scores["wape"],
            val_loss=scores["val_loss"],
            val_block_losses=scores["val_blocks"],
        )
        return NodeReply(reply.metrics(), records=_totals(settings, ask, released, request))

    # ------------------------------------------------------------------ simulations
    def node_data(self, folder: Path) -> list[Path]:
        """The hospitals' data in a region folder, sorted by name (``H000.csv``, ``H001.sqlite``, ``H002.fhir``, ...).

        A file with a data suffix or a FHIR Bundle (``.fhir.json``), or a folder that is an OMOP or
        FHIR export; hidden entries and anything else (``region.json``, ``ledgers/``) are not hospitals.
        """
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")

        def is_hospital(p: Path) -> bool:
            if p.name.startswith("."):
                return False
            if p.is_file():
                return p.suffix in DATA_SUFFIXES or p.name.endswith(".fhir.json")
            return p.is_dir() and DataSource(str(p)).kind() != "contract"

        return sorted(p for p in folder.iterdir() if is_hospital(p))

    def public_calendar(self, data_path: Path) -> dict[str, str]:
        """The calendar a node's log suggests for ``data_path`` (its units and whole months), for its operator."""
        from medalloc_core.privacy.calendar import suggested_calendar
        from medalloc_core.sources import load_node_source

        records, stays, _ = load_node_source(DataSource(str(data_path)))
        if stays is not None and len(stays):
            events = pd.concat([pd.to_datetime(stays[ADMIT_TIME]), pd.to_datetime(stays[DISCHARGE_TIME])]).dropna()
            first, last, units = events.min(), events.max(), stays[UNIT].astype(str).unique()
        else:
            days = pd.to_datetime(records.frame[DATE])
            first, last, units = days.min(), days.max(), records.frame[UNIT].astype(str).unique()
        return suggested_calendar(first_event=first, last_event=last, data_units=list(units))

    def report(self, sim: SimulationRun) -> dict[str, Any]:
        from medalloc_core.tasks.forecasting.report import forecast_report

        return forecast_report(sim, task=self)

    def check_comparisons(self, raw: Mapping[str, Any]) -> None:
        from medalloc_core.tasks.forecasting.report import ForecastComparisons

        ForecastComparisons.from_section(raw)

    def check_region(self, raw: Mapping[str, Any]) -> None:
        from dataclasses import fields

        from medalloc_core.synthetic import RegionConfig

        known = {f.name for f in fields(RegionConfig)}
        unknown = sorted(k for k in raw if str(k).replace("-", "_") not in known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in [region]; known: {sorted(known | {'data-dir'})}")
        RegionConfig(**{k.replace("-", "_"): v for k, v in raw.items()})

    def generate(self, folder: Path, region: Mapping[str, Any]) -> list[Path]:
        from medalloc_core.synthetic import RegionConfig, generate_region, write_region

        write_region(generate_region(RegionConfig(**{k.replace("-", "_"): v for k, v in region.items()})), folder)
        return self.node_data(folder)


TASK = ForecastingTask()
