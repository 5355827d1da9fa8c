"""Patient-level audit of a node: the coordinator's replay, canary stays, membership through evaluation replies.

Each attack runs the node's real code (``medalloc.client.app`` handlers, the source release) on
synthetic hospitals in a scratch folder, as the coordinator or an auditor would:

- **replay**: the coordinator knows the code, the request it sent and (worst case) the node's
  records; it replays the round on a copy of the node and compares with the node's reply. With
  coordinator-known seeds (the research switch, simulated nodes only) the replay matches to the
  last bit; with the node's CSPRNG it cannot (``max |diff|`` far above rounding).
- **canary stays**: ``medalloc_core.privacy.stay_audit``: m stays of N nights, each in with
  probability 1/2, through the node's release; the one-run lower bound (Steinke et al. 2023) at the
  ledger's delta must stay below the ledger's patient-level epsilon; with almost no noise it must
  prove a large epsilon (power).
- **evaluation replies**: T fresh nodes whose file holds one extra stay in the test period or not
  (a coin each); the coordinator sends the same model and scores each reply's ``eval-mae`` by
  which side of the midpoint between "with" and "without the stay" it falls (it knows the rest of
  the file: the likelihood-ratio test for a shift). On true counts (what nodes replied before the
  release) this separates the two perfectly; on released counts the AUC stays near 1/2.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import Context, RecordDict

from medalloc.client.app import handle_evaluate, handle_train
from medalloc_core import protocol
from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
from medalloc_core.privacy.audit_stats import mia_auc
from medalloc_core.privacy.release import ReleasePlan
from medalloc_core.privacy.stay_audit import canary_stay_audit
from medalloc_core.protocol import EvaluateInstruction, EvaluateReply, TrainInstruction
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from medalloc_core.tasks.forecasting.local import evaluate_local, load_local_data

from .local_grid import task_identity

__all__ = ["PatientAudit", "run_patient_audit"]

SPEC = federation_window_spec(history=14, horizon=7, targets=(ADMISSIONS, CENSUS))
MODEL = ForecasterConfig.for_spec(SPEC, model="mlp", hidden=8)


@dataclass(frozen=True)
class PatientAudit:
    """What the three attacks found; ``passed`` when every check holds."""

    epsilon: float  # the node's patient-level epsilon at delta (what the ledger claims)
    delta: float
    max_stay_days: int
    replay_diff_secure: float  # max |node reply - coordinator replay|, CSPRNG noise
    replay_diff_seeded: float  # the same with coordinator-known seeds (the research switch)
    canaries: int
    canary_bound: float  # one-run epsilon lower bound (95 %) at the node's epsilon
    canary_bound_power: float  # the same canaries through a release with almost no noise
    canary_auc: float
    eval_trials: int
    eval_auc_released: float  # membership AUC through evaluation replies (released counts)
    eval_auc_true_counts: float  # the same attack on replies computed from true counts (before)

    @property
    def replay_fails(self) -> bool:
        """The coordinator's replay cannot reproduce the reply (and reproduces the seeded one)."""
        return self.replay_diff_secure > 1e-4 and self.replay_diff_seeded == 0.0

    @property
    def sound(self) -> bool:
        """The canary lower bound stays below the claimed epsilon."""
        return self.canary_bound <= self.epsilon

    @property
    def powerful(self) -> bool:
        """Without noise the same canary attack proves a clearly larger epsilon."""
        return self.canary_bound_power >= 1.0 and self.canary_bound_power > self.canary_bound

    @property
    def eval_near_chance(self) -> bool:
        """Membership through evaluation replies stays near chance (|AUC - 0.5| <= 0.2: > 3 sd at 100 trials)."""
        return abs(self.eval_auc_released - 0.5) <= 0.2

    @property
    def passed(self) -> bool:
        """All checks, the evaluation-membership row included."""
        return self.replay_fails and self.sound and self.powerful and self.eval_near_chance

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the verdicts."""
        return asdict(self) | {
            "replay_fails": self.replay_fails,
            "sound": self.sound,
            "powerful": self.powerful,
            "eval_near_chance": self.eval_near_chance,
        }


def _region(folder: Path, *, hospitals: int, days: int, seed: int) -> Path:
    config = RegionConfig(
        hospitals=hospitals, days=days, seed=seed, short_history_fraction=0.0, min_beds=200, max_beds=400
    )
    write_region(generate_region(config), folder)
    return folder


def _context(folder: Path, data: Path, *, epsilon: float, simulated: bool) -> Context:
    folder.mkdir(parents=True, exist_ok=True)
    if simulated:  # a virtual node of a simulation: its region folder holds only its own file
        region = folder / "region"
        region.mkdir(exist_ok=True)
        shutil.copy(data, region / "H000.csv")
        virtual: dict[str, bool | float | int | str] = {"partition-id": 0, "num-partitions": 1}
        run: dict[str, bool | float | int | str] = {
            "simulation-data-dir": str(region),
            "simulation-epsilon-budget": epsilon,
        }
        return Context(run_id=1, node_id=1, node_config=virtual, state=RecordDict(), run_config=run)
    node: dict[str, bool | float | int | str] = {
        "data-path": str(data),
        "ledger-path": str(folder / "ledger.json"),
        "privacy-epsilon-budget": epsilon,
        # The audit's nodes (and the coordinator's replay) are separate parties on one file: each keeps
        # its own data-source record, so the machine's record is neither consulted nor written.
        "data-source-record": str(folder / "data-sources.json"),
    }
    rows = pd.read_csv(data, usecols=["date", "unit"], dtype=str)  # a deployed node declares its calendar
    node |= {
        "calendar-units": ",".join(sorted(rows["unit"].unique())),
        "calendar-start": rows["date"].min(),
        "calendar-end": rows["date"].max(),
    }
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


def _instruction(*, epsilon: float, reproducible: bool, seed: int) -> dict[str, Any]:
    return TrainInstruction(
        server_round=1,
        model_config=MODEL,
        window_spec=SPEC,
        privacy_mechanism="source",
        patient_epsilon=epsilon,
        max_stay_days=14,
        reproducible_noise=reproducible,
        seed=seed,
        local_epochs=1,
        batch_size=32,
        lr=0.01,
        proximal_mu=0.0,
        run_tag="audit",
    ).to_dict()


def _message(config: dict[str, Any], *, train: bool) -> Any:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message
    from flwr.common import MessageType

    arrays = ArrayRecord({k: Array(v) for k, v in state_arrays(build_model(MODEL, seed=0)).items()})
    content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(config)})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN if train else MessageType.EVALUATE)


def _arrays(reply: Any) -> dict[str, np.ndarray]:
    if reply.has_error():
        raise RuntimeError(f"the node refused the audit's round: {reply.error.reason}")
    return {k: v.numpy() for k, v in reply.content[protocol.ARRAYS].items()}


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def replay_attack(work: Path, data: Path, *, epsilon: float) -> tuple[float, float]:
    """``(max |diff| with the node's CSPRNG, max |diff| with coordinator-known seeds)`` of node reply vs replay."""
    diffs = []
    for reproducible, simulated in ((False, False), (True, True)):
        replies = []
        for who in ("node", "coordinator-replay"):
            ctx = _context(work / f"{who}-{reproducible}", data, epsilon=epsilon, simulated=simulated)
            config = _instruction(epsilon=epsilon, reproducible=reproducible, seed=0)
            replies.append(_arrays(handle_train(_message(config, train=True), ctx)))
        diffs.append(_max_diff(*replies))
    return diffs[0], diffs[1]


def _add_stay(frame: pd.DataFrame, *, unit: str, start: int, nights: int) -> pd.DataFrame:
    out = frame.copy()
    rows = out.index[out[UNIT] == unit]
    out.loc[rows[start], ADMISSIONS] += 1
    out.loc[rows[start : start + nights], CENSUS] += 1
    if "discharges" in out.columns:
        out.loc[rows[start + nights], "discharges"] += 1
    return out


def eval_membership(work: Path, data: Path, *, epsilon: float, trials: int, seed: int) -> tuple[float, float]:
    """AUC of the coordinator's membership test through ``eval-mae``: on released counts, and on true counts."""
    rng = np.random.default_rng(seed)
    base = pd.read_csv(data)
    unit = str(base[UNIT].iloc[0])
    n_unit = int((base[UNIT] == unit).sum())
    with_stay = _add_stay(base, unit=unit, start=n_unit - 12, nights=5)  # inside the test period
    files = {False: work / "without.csv", True: work / "with.csv"}
    base.to_csv(files[False], index=False)
    with_stay.to_csv(files[True], index=False)
    model = build_model(MODEL, seed=0)
    # What the coordinator can compute (it knows the file but for the stay): the metric either way.
    truth = {k: evaluate_local(model, load_local_data(p, SPEC).dataset)["mae"] for k, p in files.items()}
    config = EvaluateInstruction(
        server_round=1,
        model_config=MODEL,
        window_spec=SPEC,
        privacy_mechanism="source",
        patient_epsilon=epsilon,
        max_stay_days=14,
        reproducible_noise=False,
        run_tag="audit",
        seed=0,
    ).to_dict()
    released, raw, coins = [], [], []
    for t in range(trials):
        coin = bool(rng.random() < 0.5)
        ctx = _context(work / f"eval-{t}", files[coin], epsilon=epsilon, simulated=False)
        reply = handle_evaluate(_message(config, train=False), ctx)
        if reply.has_error():
            raise RuntimeError(f"the node refused the audit's evaluation: {reply.error.reason}")
        mae = EvaluateReply.from_metrics(reply.content.metric_records[protocol.METRICS]).eval_mae
        side = np.sign(truth[True] - truth[False])
        middle = (truth[True] + truth[False]) / 2
        released.append(side * (mae - middle))  # > 0: on the side of "with the stay"
        raw.append(side * (truth[coin] - middle))  # the reply a node computing on true counts gave
        coins.append(coin)
    member = np.asarray(coins)
    r, t_ = np.asarray(released), np.asarray(raw)
    return mia_auc(r[member], r[~member]), mia_auc(t_[member], t_[~member])


def run_patient_audit(*, quick: bool, seed: int = 0, epsilon: float = 1.0, workdir: Path | None = None) -> PatientAudit:
    """The three attacks at the node's default patient-level epsilon (1, delta 1e-6, stays <= 14 nights)."""
    with tempfile.TemporaryDirectory(prefix="medalloc-patient-audit-") as scratch, task_identity():
        work = workdir or Path(scratch)
        data = sorted(_region(work / "region", hospitals=1, days=240, seed=seed).glob("H*.csv"))[0]
        secure, seeded = replay_attack(work / "replay", data, epsilon=epsilon)
        plan = ReleasePlan.calibrate(epsilon=epsilon, delta=1e-6, max_stay_days=14)
        big = generate_region(
            RegionConfig(hospitals=1, days=730, seed=seed, short_history_fraction=0.0, min_beds=300, max_beds=400)
        ).hospitals[0]
        records = UnitRecords(big.daily[[DATE, UNIT, ADMISSIONS, CENSUS]], Frequency.DAILY, Path("canaries"), "daily")
        m = 100 if quick else 180
        canary = canary_stay_audit(records, plan, canaries=m, seed=seed)
        noiseless = ReleasePlan.calibrate(epsilon=1000.0, delta=1e-6, max_stay_days=14)
        power = canary_stay_audit(records, noiseless, canaries=m, seed=seed)
        trials = 40 if quick else 100
        (work / "eval").mkdir(parents=True, exist_ok=True)
        auc_released, auc_true = eval_membership(work / "eval", data, epsilon=epsilon, trials=trials, seed=seed)
        return PatientAudit(
            epsilon=canary.ledger_epsilon,
            delta=plan.delta,
            max_stay_days=plan.max_stay_days,
            replay_diff_secure=secure,
            replay_diff_seeded=seeded,
            canaries=m,
            canary_bound=canary.audit.epsilon_lower_bound,
            canary_bound_power=power.audit.epsilon_lower_bound,
            canary_auc=canary.auc,
            eval_trials=trials,
            eval_auc_released=auc_released,
            eval_auc_true_counts=auc_true,
        )


def report_json(audit: PatientAudit) -> str:
    """``audit.to_dict()`` as indented JSON."""
    return json.dumps(audit.to_dict(), indent=2)
