"""Write a synthetic region to disk: one file per hospital plus region.json."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pandas as pd

from medalloc_core import contract as c
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import RecordShape
from medalloc_core.synthetic.region import Hospital, Region

log = logging.getLogger(__name__)

METADATA_NAME = "region.json"
_REGION_FILE = re.compile(r"^H\d{3,}\.(csv|parquet)$")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def existing_region_files(out_dir: Path) -> list[Path]:
    """Files in ``out_dir`` that an earlier ``write_region`` would have written."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.name == METADATA_NAME or _REGION_FILE.match(p.name))


def write_region(
    region: Region,
    out_dir: Path | str,
    *,
    shape: RecordShape = "daily",
    fmt: str = "csv",
    overwrite: bool = False,
) -> list[Path]:
    """Write every hospital as ``{hospital_id}.{fmt}`` and the true parameters as region.json.

    Parameters
    ----------
    region
        What ``generate_region`` returned.
    out_dir
        Created if missing.
    shape
        ``"daily"`` (contract columns) or ``"encounters"`` (needs a region generated with
        ``RegionConfig(shape="encounters")``).
    fmt
        ``"csv"`` or ``"parquet"``.
    overwrite
        An earlier region in ``out_dir`` is refused (``FileExistsError``) unless this is
        true, in which case its files are removed first so no stale hospital remains.

    Returns
    -------
    list[Path]
        The hospital files in order, then region.json (written last: its presence means
        the region is complete).
    """
    if shape not in ("daily", "encounters"):
        raise ValueError(f"shape must be 'daily' or 'encounters', got {shape!r}")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    if shape == "encounters" and any(h.encounters is None for h in region.hospitals):
        raise ValueError("this region has no encounter tables: generate it with RegionConfig(shape='encounters')")
    out_dir = Path(out_dir)
    earlier = existing_region_files(out_dir)
    if earlier and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a region ({len(earlier)} files, e.g. {earlier[0].name}); "
            "choose another directory or allow overwriting"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in earlier:
        log.info("removing %s from an earlier region", path)
        path.unlink()

    written = []
    for hospital in region.hospitals:
        path = out_dir / f"{hospital.hospital_id}.{fmt}"
        frame = _encounter_frame(hospital) if shape == "encounters" else _daily_frame(hospital)
        # Each file appears whole or not at all (atomic rename), so a crash never leaves half a hospital.
        if fmt == "csv":
            data = frame.to_csv(index=False, lineterminator="\n", date_format=_TIME_FORMAT).encode("utf-8")
        else:
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
            data = buffer.getvalue()
        atomic_write_bytes(path, data)
        written.append(path)
    metadata = dict(region.metadata, files={"shape": shape, "format": fmt})
    meta_path = out_dir / METADATA_NAME
    atomic_write_bytes(meta_path, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    written.append(meta_path)
    return written


def _daily_frame(hospital: Hospital) -> pd.DataFrame:
    """Daily records with ``date`` as a calendar date (CSV ``YYYY-MM-DD``, Parquet date32)."""
    frame = hospital.daily.copy()
    frame[c.DATE] = frame[c.DATE].dt.date
    return frame


def _encounter_frame(hospital: Hospital) -> pd.DataFrame:
    """Encounter records; open stays keep an empty ``discharge_time``."""
    assert hospital.encounters is not None  # checked by write_region
    return hospital.encounters
