"""What a simulated node is told and where it keeps its files: the ``simulation-*`` run-config keys, typed once.

On a real node nothing here applies: it reads its own node config. Flower's simulation gives
a virtual node only ``partition-id``/``num-partitions``, so its data, ledger and budget come
from the simulation-only run-config keys, read by :meth:`SimulationConfig.from_run_config`.
The ServerApp's ``RunConfig`` takes its ``simulation-*`` defaults from this dataclass, so the
coordinator and the nodes can never disagree about them. The simulated ledger's file name and
the generated region's folder are computed here, once, for the runner, the nodes and the
benchmarks.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

#: The product's privacy budget per privacy unit (a patient stay) when nothing says otherwise: the
#: run's proposal (``patient-epsilon``), a simulated node's budget and a scenario's ``[privacy] epsilon``.
PATIENT_EPSILON = 1.0

#: The run-config prefix of every key in :class:`SimulationConfig`.
PREFIX = "simulation-"


class SimulationConfigError(ValueError):
    """A ``simulation-*`` run-config key has a bad value; the message names the key."""


@dataclass(frozen=True)
class SimulationConfig:
    """The ``simulation-<field>`` run-config keys (kebab-case) that stand in for a virtual node's node config.

    Every default here is the one default: ``RunConfig`` and ``pyproject.toml`` repeat them, and a
    test holds them equal.
    """

    data_dir: str = ""  # region folder with one hospital per virtual node; empty: generated (ensure_simulation_region)
    epsilon_budget: float = PATIENT_EPSILON  # each virtual node's lifetime budget per privacy unit
    delta: float = 1e-6
    max_stay_days: int = 14
    # Research only: nodes' DP noise follows `seed` (logged); NOT private against the coordinator, a real node refuses.
    reproducible_noise: bool = False
    days: int = 730  # the generated region's days (`flwr run .` without data-dir)
    region_seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0) or not 0 < self.delta < 1:
            raise SimulationConfigError("simulation-epsilon-budget must be > 0 and simulation-delta in (0, 1)")
        if self.max_stay_days < 1:
            raise SimulationConfigError(f"simulation-max-stay-days must be >= 1, got {self.max_stay_days}")

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any]) -> SimulationConfig:
        """The ``simulation-*`` keys of a run config (other keys ignored), typed like the defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name.replace("_", "-")
            if key not in run:
                continue
            value, default = run[key], f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int | float) and not isinstance(value, bool) and float(value) == int(value)
                value = int(value) if ok else value
            elif isinstance(default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))
                value = float(value) if ok else value
            else:
                ok, value = True, str(value)
            if not ok:
                raise SimulationConfigError(f"run-config '{key}' must be like {default!r}, got {value!r}")
            values[f.name] = value
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case ``simulation-*`` keys, the inverse of ``from_run_config``."""
        return {PREFIX + f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def simulated_ledger_path(region_dir: Path, task: str, hospital_id: str) -> Path:
    """Where virtual node ``hospital_id`` keeps its ledger of ``task``: ``<region>/ledgers/<id><suffix>.json``.

    The one place that names it: the nodes write it, the runner, the task reports and the
    benchmarks read it.
    """
    from medalloc_core.tasks import get_task

    return Path(region_dir) / "ledgers" / f"{hospital_id}{get_task(task).ledger_file_suffix}.json"


def ensure_simulation_region(*, hospitals: int, days: int, seed: int, task: str) -> Path:
    """The region folder for a simulation run without ``simulation-data-dir``; generated on first use.

    Every virtual node computes the same path (temp dir, named by task/hospitals/days/seed); the
    first to arrive generates the region into a private folder and renames it into place, so
    concurrent nodes never see a half-written region.
    """
    from medalloc_core.tasks import get_task

    folder = Path(tempfile.gettempdir()) / f"medalloc-simulation-{task}-h{hospitals}-d{days}-s{seed}"
    if folder.is_dir() and get_task(task).node_data(folder):
        return folder
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    get_task(task).generate(staging / "region", {"hospitals": hospitals, "days": days, "seed": seed})
    try:
        os.rename(staging / "region", folder)
    except OSError:  # another node won the race; its region is identical (same config, same seed)
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
