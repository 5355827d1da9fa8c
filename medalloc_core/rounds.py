"""The coordinator's round log: one typed ``RoundRecord`` per line of ``metrics.jsonl``.

The ServerApp appends a record after every round (round 0: the initial model's evaluation);
the simulation runner, the CLI's progress display, the plots and the benchmarks read them
back through :func:`read_rounds`, so the keys are spelled in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medalloc_core.atomic import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """What happened in one federated round.

    Parameters
    ----------
    round : int
        1, 2, ...; 0 is the initial model's evaluation (only ``time`` and ``evaluate`` set).
    time : str
        ISO timestamp (UTC) at the end of the round.
    evaluate : dict
        The aggregated evaluation metrics (empty when no node evaluated).
    seconds : float or None
        Wall time of the round.
    strategy : str
        The strategy's run-config name.
    model_updated : bool
        False when no reply was aggregated and the global model was kept.
    train : dict
        The aggregated training metrics.
    nodes : dict
        ``{"sampled": n, "accepted": a, "dropped": d, "refused": r, "failed": f}`` (zeros omitted).
    epsilon_max, epsilon_mean : float or None
        Over the nodes that trained this round, their cumulative patient-level epsilon.
    privacy : dict
        The headline: ``{"unit": "patient", "epsilon-max": e, "delta": d, "max-stay-days": n}``,
        epsilon per patient (a stay of at most n nights) at delta, the largest over the nodes.
    outcomes : list of dict
        One entry per node: ``node``, ``status``, optional ``hospital``, ``reason``, ``epsilon``,
        ``update-norm``.
    client_dp_epsilon : float or None
        Client-level epsilon of the aggregate so far (client-level DP only).
    """

    round: int
    time: str
    evaluate: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    strategy: str = ""
    model_updated: bool = False
    train: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    epsilon_max: float | None = None
    epsilon_mean: float | None = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    client_dp_epsilon: float | None = None
    privacy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one ``metrics.jsonl`` line (kebab-case keys; unset optional fields left out)."""
        if self.round == 0:
            return {"round": 0, "time": self.time, "evaluate": self.evaluate}
        out: dict[str, Any] = {
            "round": self.round,
            "time": self.time,
            "seconds": self.seconds,
            "strategy": self.strategy,
            "model-updated": self.model_updated,
            "train": self.train,
            "evaluate": self.evaluate,
            "nodes": self.nodes,
            "epsilon-max": self.epsilon_max,
            "epsilon-mean": self.epsilon_mean,
            "outcomes": self.outcomes,
        }
        if self.client_dp_epsilon is not None:
            out["client-dp-epsilon"] = self.client_dp_epsilon
        if self.privacy:
            out["privacy"] = self.privacy
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RoundRecord:
        """Inverse of ``to_dict``; raises ``ValueError`` on a line that is not a round record."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("round"), int) or "time" not in raw:
            raise ValueError(f"not a round record: {str(raw)[:120]}")
        return cls(
            round=raw["round"],
            time=str(raw["time"]),
            evaluate=dict(raw.get("evaluate") or {}),
            seconds=raw.get("seconds"),
            strategy=str(raw.get("strategy", "")),
            model_updated=bool(raw.get("model-updated", False)),
            train=dict(raw.get("train") or {}),
            nodes=dict(raw.get("nodes") or {}),
            epsilon_max=raw.get("epsilon-max"),
            epsilon_mean=raw.get("epsilon-mean"),
            outcomes=list(raw.get("outcomes") or []),
            client_dp_epsilon=raw.get("client-dp-epsilon"),
            privacy=dict(raw.get("privacy") or {}),
        )


def append_round(path: Path, record: RoundRecord) -> None:
    """Append one record as a JSON line."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")


def read_rounds(path: Path) -> list[RoundRecord]:
    """Every record of a ``metrics.jsonl`` file, in order; an absent file has none."""
    if not path.exists():
        return []
    return [
        RoundRecord.from_dict(json.loads(line))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def truncate_rounds(path: Path, last_round: int) -> None:
    """Drop lines after ``last_round`` (a resume redoes those rounds), atomically.

    A crash can leave a torn last line or a round logged without its checkpoint; both go, and
    the kept lines are kept byte for byte.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            number = json.loads(line).get("round")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(number, int) and number <= last_round:
            kept.append(line + "\n")
    atomic_write_bytes(path, "".join(kept).encode())


def refusal_summary(rounds: list[RoundRecord]) -> dict[str, int]:
    """How often each reason ended a node's round (``"refused: privacy-budget-exceeded: ..."``), over ``rounds``."""
    counts: dict[str, int] = {}
    for record in rounds:
        for outcome in record.outcomes or []:
            if outcome.get("status") != "accepted":
                key = f"{outcome.get('status')}: {str(outcome.get('reason', '')).split(':')[0] or 'no reason given'}"
                counts[key] = counts.get(key, 0) + 1
    return counts
