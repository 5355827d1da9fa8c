"""Valid inputs the command generators break one way each: a hospital's records, a model, forecasts, tables, a ledger.

Each is built once per process from fixed seeds (small: a 2-hospital region of 120 days, an
untrained 8-wide MLP) and returned as bytes, so a generator only has to copy and damage it.
"""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

import pandas as pd

HOSPITALS = ("H000", "H001")
DAYS = 120
HISTORY, HORIZON, HELD_OUT = 14, 7, 14


@cache
def region_files() -> dict[str, bytes]:
    """``H000.csv``, ``H001.csv``: two generated hospitals' daily unit records."""
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    config = RegionConfig(
        hospitals=len(HOSPITALS),
        days=DAYS,
        seed=4,
        min_beds=40,
        max_beds=80,
        short_history_fraction=0.0,
        specialty_centres=0,
        warmup_days=30,
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_region(generate_region(config), Path(tmp))
        return {p.name: p.read_bytes() for p in paths if p.suffix == ".csv"}


def hospital_csv(hospital: str = "H000") -> bytes:
    """One hospital's records."""
    return region_files()[f"{hospital}.csv"]


@cache
def model_files() -> dict[str, bytes]:
    """``final_model.safetensors`` and ``final_model.json``: an untrained MLP (seed 0) fitting the records."""
    from medalloc_core.forecast.features import WindowSpec
    from medalloc_core.forecast.models import ForecasterConfig, build_model
    from medalloc_core.model_io import save_model

    spec = WindowSpec(history=HISTORY, horizon=HORIZON, val_periods=HELD_OUT, test_periods=HELD_OUT)
    model = build_model(ForecasterConfig.for_spec(spec, model="mlp", hidden=8), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(Path(tmp) / "final_model.safetensors", model, spec=spec)
        sidecar = path.with_suffix(".json")
        return {path.name: path.read_bytes(), sidecar.name: sidecar.read_bytes()}


def model_meta() -> dict:
    """The model sidecar, parsed."""
    return json.loads(model_files()["final_model.json"])


@cache
def forecast_csv(hospital: str = "H000") -> bytes:
    """The forecast frame ``medalloc forecast`` writes for ``hospital`` with :func:`model_files`."""
    from medalloc_core.allocation.forecast_io import write_forecast
    from medalloc_core.forecast.predict import forecast_records
    from medalloc_core.model_io import load_model
    from medalloc_core.validation import load_unit_records

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in model_files().items():
            (root / name).write_bytes(data)
        (root / f"{hospital}.csv").write_bytes(hospital_csv(hospital))
        saved = load_model(root / "final_model.safetensors")
        frame = forecast_records(
            saved.model, saved.spec, load_unit_records(root / f"{hospital}.csv"), hospital=hospital
        )
        return write_forecast(frame, root / "forecast.csv").read_bytes()


def forecast_frame(hospital: str = "H000") -> pd.DataFrame:
    """:func:`forecast_csv` as a frame of strings (for editing one cell)."""
    import io

    return pd.read_csv(io.BytesIO(forecast_csv(hospital)), dtype=str, keep_default_na=False)


@cache
def shared_csv(hospital: str) -> bytes:
    """What ``medalloc share`` sends for ``hospital``: hospital, date, q, value (census totals, no noise here)."""
    import io

    from medalloc_core.allocation.forecast_io import read_forecast
    from medalloc_core.allocation.regional import hospital_totals

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forecast.csv"
        path.write_bytes(forecast_csv(hospital))
        totals = hospital_totals(read_forecast(path))
    totals = totals.assign(date=pd.to_datetime(totals["date"]).dt.strftime("%Y-%m-%d"))
    buffer = io.StringIO()
    totals.loc[:, ["hospital", "date", "q", "value"]].to_csv(buffer, index=False)
    return buffer.getvalue().encode()


@cache
def units(hospital: str = "H000") -> tuple[str, ...]:
    """The unit names in a hospital's records."""
    import io

    return tuple(sorted(pd.read_csv(io.BytesIO(hospital_csv(hospital)), usecols=["unit"])["unit"].unique()))


def capacity_csv(hospital: str = "H000") -> bytes:
    """A unit capacity table: unit, beds, staffed."""
    rows = ["unit,beds,staffed"] + [f"{u},60,50" for u in units(hospital)]
    return ("\n".join(rows) + "\n").encode()


def region_capacity_csv() -> bytes:
    """The regional capacity table: hospital, beds, staffed."""
    return ("hospital,beds,staffed\n" + "".join(f"{h},300,250\n" for h in HOSPITALS)).encode()


def unit_config_csv(hospital: str = "H000") -> bytes:
    """A per-unit config: unit, under_cost, over_cost, nurse_ratio."""
    rows = ["unit,under_cost,over_cost,nurse_ratio"] + [f"{u},10,1,4" for u in units(hospital)]
    return ("\n".join(rows) + "\n").encode()


@cache
def ledger_files() -> dict[str, bytes]:
    """``ledger.json`` (one spend) and its key ``ledger.json.key``."""
    from medalloc_core.privacy.ledger import PrivacyLedger, ledger_key_path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.json"
        ledger = PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")
        ledger.spend("a" * 64, noise_multiplier=1.0, sample_rate=0.05, steps=100, run_id="r1")
        return {"ledger.json": path.read_bytes(), "ledger.json.key": ledger_key_path(path).read_bytes()}
