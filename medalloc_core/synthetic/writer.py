"""Write a synthetic region to disk: one file (or export) per hospital plus region.json."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Literal

import pandas as pd

from medalloc_core import contract as c
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import RecordShape
from medalloc_core.synthetic.region import Hospital, Region

log = logging.getLogger(__name__)

METADATA_NAME = "region.json"
# What write_region writes per hospital: a contract file, an OMOP SQLite database or export
# folder (.omop), a FHIR Bulk Data folder (.fhir) or Bundle (.fhir.json).
_REGION_FILE = re.compile(r"^H\d{3,}\.(csv|parquet|sqlite|omop|fhir|fhir\.json)$")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

RegionShape = Literal["daily", "encounters", "omop", "fhir", "mixed"]
SHAPES: tuple[str, ...] = ("daily", "encounters", "omop", "fhir", "mixed")
# Formats per shape; the first is the default.
SHAPE_FORMATS: dict[str, tuple[str, ...]] = {
    "daily": ("csv", "parquet"),
    "encounters": ("csv", "parquet"),
    "omop": ("sqlite", "csv", "parquet"),
    "fhir": ("ndjson", "bundle"),
    "mixed": ("mixed",),
}
# A mixed region cycles through every kind of source, so a federation's nodes read different formats.
MIXED_CYCLE: tuple[tuple[str, str], ...] = (
    ("omop", "sqlite"),
    ("fhir", "ndjson"),
    ("daily", "csv"),
    ("omop", "csv"),
    ("fhir", "bundle"),
    ("encounters", "parquet"),
)


def existing_region_files(out_dir: Path) -> list[Path]:
    """Files and export folders in ``out_dir`` that an earlier ``write_region`` would have written."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.name == METADATA_NAME or _REGION_FILE.match(p.name))


def hospital_path(out_dir: Path, hospital_id: str, shape: str, fmt: str) -> Path:
    """Where ``write_region`` puts one hospital of the given shape and format."""
    if shape == "omop":
        return out_dir / (f"{hospital_id}.sqlite" if fmt == "sqlite" else f"{hospital_id}.omop")
    if shape == "fhir":
        return out_dir / (f"{hospital_id}.fhir" if fmt == "ndjson" else f"{hospital_id}.fhir.json")
    return out_dir / f"{hospital_id}.{fmt}"


def write_region(
    region: Region,
    out_dir: Path | str,
    *,
    shape: RegionShape | RecordShape = "daily",
    fmt: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> list[Path]:
    """Write every hospital (one file or export each) and the true parameters as region.json.

    Parameters
    ----------
    region
        What ``generate_region`` returned.
    out_dir
        Created if missing.
    shape
        ``"daily"`` (contract columns), ``"encounters"`` (patient stays), ``"omop"`` (an OMOP
        CDM: ``H000.sqlite``, or ``H000.omop/`` with CSV/Parquet tables), ``"fhir"`` (FHIR R4:
        ``H000.fhir/`` Bulk Data NDJSON, or ``H000.fhir.json`` Bundle), or ``"mixed"`` (the
        hospitals cycle through all of these, see ``MIXED_CYCLE``). Every shape but daily
        needs a region generated with ``RegionConfig(shape="encounters")``.
    fmt
        A format of the shape (``SHAPE_FORMATS``); None takes the shape's default.
    overwrite
        An earlier region in ``out_dir`` is refused (``FileExistsError``) unless this is
        true, in which case its files are removed first so no stale hospital remains.
    seed
        Seeds the non-inpatient records OMOP and FHIR exports add around the stays.

    Returns
    -------
    list[Path]
        The hospital files or folders in order, then region.json (written last: its
        presence means the region is complete).
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    fmt = fmt or SHAPE_FORMATS[shape][0]
    if fmt not in SHAPE_FORMATS[shape]:
        raise ValueError(f"a {shape} region is written as {' or '.join(SHAPE_FORMATS[shape])}, got {fmt!r}")
    if shape != "daily" and any(h.encounters is None for h in region.hospitals):
        raise ValueError(f"a {shape} region needs encounter tables: generate it with RegionConfig(shape='encounters')")
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
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    written = []
    kinds = []
    for k, hospital in enumerate(region.hospitals):
        kind, kind_fmt = MIXED_CYCLE[k % len(MIXED_CYCLE)] if shape == "mixed" else (shape, fmt)
        written.append(_write_hospital(hospital, out_dir, kind, kind_fmt, seed))
        kinds.append({"hospital": hospital.hospital_id, "shape": kind, "format": kind_fmt, "path": written[-1].name})
    files: dict[str, object] = {"shape": shape, "format": fmt}
    if shape == "mixed":
        files["hospitals"] = kinds  # which hospital is which kind of source
    metadata = dict(region.metadata, files=files)
    meta_path = out_dir / METADATA_NAME
    atomic_write_bytes(meta_path, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    written.append(meta_path)
    return written


def _write_hospital(hospital: Hospital, out_dir: Path, shape: str, fmt: str, seed: int) -> Path:
    path = hospital_path(out_dir, hospital.hospital_id, shape, fmt)
    if shape in ("omop", "fhir"):
        from medalloc_core.sources import synthetic as exports

        assert hospital.encounters is not None  # checked by write_region
        if shape == "omop":
            tables = exports.omop_tables(hospital.encounters, hospital_id=hospital.hospital_id, seed=seed)
            return exports.write_omop(tables, path, fmt)  # type: ignore[arg-type]
        resources = exports.fhir_resources(hospital.encounters, hospital_id=hospital.hospital_id, seed=seed)
        return exports.write_fhir(resources, path, fmt)  # type: ignore[arg-type]
    frame = _encounter_frame(hospital) if shape == "encounters" else _daily_frame(hospital)
    # Each file appears whole or not at all (atomic rename), so a crash never leaves half a hospital.
    if fmt == "csv":
        data = frame.to_csv(index=False, lineterminator="\n", date_format=_TIME_FORMAT).encode("utf-8")
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
        data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return path


def _daily_frame(hospital: Hospital) -> pd.DataFrame:
    """Daily records with ``date`` as a calendar date (CSV ``YYYY-MM-DD``, Parquet date32)."""
    frame = hospital.daily.copy()
    frame[c.DATE] = frame[c.DATE].dt.date
    return frame


def _encounter_frame(hospital: Hospital) -> pd.DataFrame:
    """Encounter records; open stays keep an empty ``discharge_time``."""
    assert hospital.encounters is not None  # checked by write_region
    return hospital.encounters
