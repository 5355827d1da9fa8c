"""Small synthetic fleets shared by the equipment tests (generated once per process, copied per test)."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

from medalloc_core.equipment.synthetic import EquipmentRegion, FleetConfig, generate_fleets, write_fleets

# Two small hospitals, 400 days: long enough for a training and a 182-day test period.
SMALL = FleetConfig(hospitals=2, days=400, seed=5, device_scale=0.3, min_beds=200, max_beds=300)


@cache
def small_region() -> EquipmentRegion:
    """The SMALL fleets in memory (with the hidden state at the end of day 300)."""
    return generate_fleets(SMALL, keep_states=(300,))


@cache
def _written(fmt: str) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"medalloc-fleets-{fmt}-"))
    write_fleets(small_region(), folder / "fleets", fmt=fmt)
    return folder / "fleets"


def fleet_copy(tmp_path: Path, fmt: str = "csv") -> Path:
    """A private copy of the SMALL fleets (H000/, H001/, fleet.json) under ``tmp_path``."""
    target = tmp_path / f"fleets-{fmt}"
    shutil.copytree(_written(fmt), target)
    return target


# One larger hospital (about 280 devices, 600 days): enough failures to learn from.
MEDIUM = FleetConfig(hospitals=1, days=600, seed=11, min_beds=450, max_beds=450)


@cache
def medium_region() -> EquipmentRegion:
    """The MEDIUM fleet in memory."""
    return generate_fleets(MEDIUM)
