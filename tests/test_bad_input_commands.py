"""Each traceback or silent acceptance of issue 12, as a named case: exit 2, a message naming file and field,
no traceback, inputs byte-identical, nothing written (``fuzz.registry.run_case`` checks all five).

The fuzz campaign (tests/test_fuzz_commands.py, ``python -m fuzz.commands``) draws thousands
of such inputs; these are the ones the issue reported, kept by name so a regression says which.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fuzz import fixtures
from fuzz.gen_forecast import resign
from fuzz.gen_simulate import default_text, drop_section, set_key
from fuzz.registry import Case, run_case
from medalloc.cli import app

REPO = Path(__file__).resolve().parents[1]
MODEL = ("--model", "final_model.safetensors", "--data", "H000.csv", "--out", "fc")


def _model_files(**meta_edits: object) -> dict[str, bytes]:
    meta = fixtures.model_meta()
    meta["model-config"].update(meta_edits)
    return {**fixtures.model_files(), "final_model.json": resign(meta), "H000.csv": fixtures.hospital_csv()}


def _unsigned(edit: str) -> dict[str, bytes]:
    meta = fixtures.model_meta()
    if edit == "quantiles":
        meta["model-config"]["quantiles"] = [0.05, 0.5, 0.95]  # relabels the P10/P90 band as P5/P95
    else:
        meta["window-spec"]["targets"] = ["census", "admissions"]  # swaps what the two outputs mean
    return {
        **fixtures.model_files(),
        "final_model.json": json.dumps(meta).encode(),
        "H000.csv": fixtures.hospital_csv(),
    }


def _forecast_with(value: str) -> bytes:
    frame = fixtures.forecast_frame()
    row = frame.index[frame["target"].eq("census") & frame["q"].astype(float).eq(0.9)][0]
    frame.loc[row, "value"] = value
    return frame.to_csv(index=False).encode()


def _parquet(text: bytes) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(pd.read_csv(io.BytesIO(text), dtype=str), preserve_index=False), buffer)
    return buffer.getvalue()


def _capacity(beds: str) -> bytes:
    return ("unit,beds\n" + "".join(f"{u},{beds}\n" for u in fixtures.units())).encode()


def _records_with(**cells: str) -> bytes:
    """The hospital's records with the first row's ``cells`` replaced."""
    frame = pd.read_csv(io.BytesIO(fixtures.hospital_csv()), dtype=str)
    for column, value in cells.items():
        frame.loc[0, column] = value
    return frame.to_csv(index=False).encode()


def _allocate(**files: bytes) -> dict[str, bytes]:
    return {"forecast.csv": fixtures.forecast_csv(), "capacity.csv": fixtures.capacity_csv(), **files}


ALLOCATE = ("--forecast", "forecast.csv", "--capacity", "capacity.csv", "--out", "plan")
REGION = ("--capacity", "capacity.csv", "--out", "region", "--scenarios", "3")
REGION_FILES = {
    "H000.csv": fixtures.shared_csv("H000"),
    "H001.csv": fixtures.shared_csv("H001"),
    "capacity.csv": fixtures.region_capacity_csv(),
}
SCENARIO = ("--config", "scenario.toml", "--out", "results")


def _scenario(text: str | bytes) -> dict[str, bytes]:
    return {"scenario.toml": text.encode() if isinstance(text, str) else text}


ISSUE_CASES = {
    # --- model files: the sidecar bound to the weights, sizes checked before allocating
    "sidecar quantiles edited": Case("forecast", MODEL, _unsigned("quantiles"), ("final_model.json", "digest")),
    "sidecar targets edited": Case("forecast", MODEL, _unsigned("targets"), ("final_model.json", "digest")),
    "model-config hidden: 1.5": Case("forecast", MODEL, _model_files(hidden=1.5), ("final_model.json", "hidden")),
    "hidden=60000, layers=4": Case(
        "forecast", MODEL, _model_files(hidden=60000, layers=4), ("final_model.json", "MAX_MODEL_PARAMETERS")
    ),
    # --- allocate
    "allocate --forecast DIR": Case(
        "allocate",
        ("--forecast", "folder", "--capacity", "capacity.csv", "--out", "plan"),
        {"folder/forecast.csv": fixtures.forecast_csv(), "capacity.csv": fixtures.capacity_csv()},
        ("folder", "not a regular file"),
    ),
    "capacity 1e30": Case(
        "allocate",
        ALLOCATE,
        _allocate(**{"capacity.csv": _capacity("1e30")}),
        ("capacity.csv", "row 2", "beds", "1,000,000"),
    ),  # fmt: skip
    "capacity-from with capacity 'lots'": Case(
        "allocate",
        ("--forecast", "forecast.csv", "--capacity-from", "H000.csv", "--out", "plan"),
        {"forecast.csv": fixtures.forecast_csv(), "H000.csv": _records_with(capacity="lots")},
        ("H000.csv", "row 2", "capacity", "lots"),
    ),
    "a P90 of 1e300": Case(
        "allocate",
        ALLOCATE,
        _allocate(**{"forecast.csv": _forecast_with("1e300")}),
        ("forecast.csv", "value", "1,000,000"),
    ),  # fmt: skip
    "unit-config under_cost without over_cost": Case(
        "allocate",
        (*ALLOCATE, "--unit-config", "units.csv"),
        _allocate(**{"units.csv": ("unit,under_cost\n" + "".join(f"{u},20\n" for u in fixtures.units())).encode()}),
        ("units.csv", "under_cost", "over_cost"),
    ),
    "an empty unit-config (was 'No columns to parse from file')": Case(
        "allocate", (*ALLOCATE, "--unit-config", "units.csv"), _allocate(**{"units.csv": b""}), ("units.csv", "empty")
    ),
    # --- allocate-region
    "the same hospital in two files": Case(
        "allocate-region",
        ("--forecast", "H000.csv", "--forecast", "H001.csv", "--forecast", "copy.csv", *REGION),
        {**REGION_FILES, "copy.csv": fixtures.shared_csv("H000")},
        ("copy.csv", "'H000'", "H000.csv"),
    ),
    "the same file twice": Case(
        "allocate-region",
        ("--forecast", "H000.csv", "--forecast", "H001.csv", "--forecast", "./H000.csv", *REGION),
        REGION_FILES,
        ("H000.csv", "given twice"),
    ),
    "a hospital with capacity and no forecast": Case(
        "allocate-region",
        ("--forecast", "H000.csv", *REGION),
        REGION_FILES,
        ("capacity.csv", "['H001']", "no forecast"),
    ),
    # --- share
    "share --epsilon 710": Case(
        "share",
        ("--forecast", "f.csv", "--data", "d.csv", "--ledger", "l.json", "--epsilon", "710"),
        {},
        ("--epsilon",),
    ),  # fmt: skip
    "share --sensitivity inf": Case(
        "share",
        ("--forecast", "f.csv", "--data", "d.csv", "--ledger", "l.json", "--epsilon", "1", "--sensitivity", "inf"),
        {},
        ("--sensitivity",),
    ),  # fmt: skip
    "share --delta 0": Case(
        "share",
        ("--forecast", "f.csv", "--data", "d.csv", "--ledger", "l.json", "--epsilon", "1", "--delta", "0"),
        {},
        ("--delta",),
    ),  # fmt: skip
    # --- generate
    "generate --start 9999-12-01": Case("generate", ("--start", "9999-12-01", "--out", "r"), {}, ("start",)),
    "generate --start 0001-01-01": Case("generate", ("--start", "0001-01-01", "--out", "r"), {}, ("start",)),
    "generate --days 100000000": Case("generate", ("--days", "100000000", "--out", "r"), {}, ("days", "18262")),
    "generate --hospitals 100000000": Case("generate", ("--hospitals", "100000000", "--out", "r"), {}, ("1000",)),
    # --- privacy / share on damaged ledgers, audit
    "a ledger of 100,000 '['": Case("privacy", ("--ledger", "l.json"), {"l.json": b"[" * 100_000}, ("l.json",)),
    "audit --noise-multiplier nan": Case(
        "audit", ("--quick", "--noise-multiplier", "nan", "--out", "a"), {}, ("--noise-multiplier",)
    ),  # fmt: skip
    "audit --max-grad-norm inf": Case(
        "audit", ("--quick", "--max-grad-norm", "inf", "--out", "a"), {}, ("--max-grad-norm",)
    ),  # fmt: skip
    # --- simulate and its scenario
    "scenario region = 3": Case(
        "simulate", SCENARIO, _scenario("region = 3\n" + drop_section(default_text(), "region")), ("[region]",)
    ),
    "scenario baselines = 5": Case(
        "simulate",
        SCENARIO,
        _scenario(set_key(default_text(), "comparisons", "baselines", "5")),
        ("[comparisons]", "baselines"),
    ),  # fmt: skip
    "a non-UTF-8 scenario": Case(
        "simulate", SCENARIO, _scenario(default_text().encode() + b"# caf\xe9\n"), ("scenario.toml", "UTF-8")
    ),
    "client-cpus = nan (Ray hung)": Case(
        "simulate", SCENARIO, _scenario(set_key(default_text(), "simulation", "client-cpus", "nan")), ("client-cpus",)
    ),
    "epsilon-budget = nan (every node refused, run 'done')": Case(
        "simulate",
        SCENARIO,
        _scenario(set_key(default_text(), "privacy", "epsilon-budget", "nan")),
        ("epsilon-budget",),
    ),  # fmt: skip
    "lr = nan": Case(
        "simulate",
        SCENARIO,
        _scenario(set_key(default_text(), "federation", "lr", "nan")),
        ("lr",),
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(ISSUE_CASES))
def test_each_reported_case_exits_2_cleanly(name: str) -> None:
    outcome = run_case(ISSUE_CASES[name], timeout=120)
    assert outcome.passed, f"{name}: {'; '.join(outcome.failures)} | {outcome.message}"
    assert "Errno" not in outcome.message, outcome.message  # the OS's words alone name no file


def test_a_valid_parquet_capacity_table_and_parquet_records_are_accepted(tmp_path: Path) -> None:
    """Parquet was "not a readable CSV"; the capacity table and the records now read like every other input."""
    (tmp_path / "forecast.csv").write_bytes(fixtures.forecast_csv())
    (tmp_path / "capacity.parquet").write_bytes(_parquet(fixtures.capacity_csv()))
    (tmp_path / "H000.parquet").write_bytes(_parquet(fixtures.hospital_csv()))
    runner = CliRunner()
    for option, path, out in (("--capacity", "capacity.parquet", "p1"), ("--capacity-from", "H000.parquet", "p2")):
        result = runner.invoke(
            app,
            [
                "allocate",
                "--forecast",
                str(tmp_path / "forecast.csv"),
                option,
                str(tmp_path / path),
                "--out",
                str(tmp_path / out),
            ],  # fmt: skip
        )
        assert result.exit_code == 0, result.output
        plan = pd.read_csv(tmp_path / out / "plan.csv")
        assert set(plan["unit"]) == set(fixtures.units()) and (plan["physical_beds"] > 0).all()


def test_rich_markup_in_messages_and_names_is_printed_verbatim(tmp_path: Path) -> None:
    """'[comparisons]' in an error and a unit called '[b]x[/b]' are shown as written, not eaten as markup."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(set_key(default_text(), "comparisons", "baselines", '["arima"]'))
    result = CliRunner().invoke(app, ["simulate", "--config", str(scenario), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "[comparisons]" in result.output

    frame = fixtures.forecast_frame()
    unit = frame["unit"].iloc[0]
    frame["unit"] = frame["unit"].replace(unit, "[b]x[/b]")
    frame.to_csv(tmp_path / "f.csv", index=False)
    capacity = fixtures.capacity_csv().decode().replace(f"\n{unit},", "\n[b]x[/b],")
    (tmp_path / "c.csv").write_text(capacity)
    result = CliRunner().invoke(
        app,
        [
            "allocate",
            "--forecast",
            str(tmp_path / "f.csv"),
            "--capacity",
            str(tmp_path / "c.csv"),
            "--out",
            str(tmp_path / "p"),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "[b]x[/b]" in result.output


def test_an_oversized_model_is_refused_without_allocating_it(tmp_path: Path) -> None:
    """hidden=60000, layers=4 built a 14 GB model before any check; now the refusal costs no memory.

    Run in a fresh interpreter whose peak resident memory is read afterwards: importing torch
    takes a few hundred MB; the model would take 14 GB (and a header claiming a 60000 x 60000
    array would take 14 GB more). The peak is the interpreter's own memory's (``VmHWM``):
    ``getrusage(RUSAGE_SELF).ru_maxrss`` keeps the forking test worker's peak across ``exec``,
    so it failed whenever the worker had grown past 1.5 GB running other tests.
    """
    for name, data in _model_files(hidden=60000, layers=4).items():
        (tmp_path / name).write_bytes(data)
    script = textwrap.dedent(
        f"""
        from medalloc_core.model_io import ModelFileError, load_model
        try:
            load_model({str(tmp_path / "final_model.safetensors")!r})
        except ModelFileError as exc:
            print("refused:", exc)
        hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print("peak_mib", int(hwm.split()[1]) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "MAX_MODEL_PARAMETERS" in done.stdout, done.stdout
    peak_mib = int(done.stdout.split("peak_mib")[1])
    assert peak_mib < 1500, f"peak {peak_mib} MiB: the model was (partly) allocated"


def _fail_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails at its last step, after the data went to a temporary file."""
    import medalloc_core.atomic

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(medalloc_core.atomic.os, "replace", refuse)


def test_every_csv_a_command_writes_is_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forecast, shared, regional and generated tables go through atomic_write_bytes: a failed write leaves
    neither a partial file nor a stray temporary one (they used to be written in place with to_csv)."""
    from medalloc_core.allocation.forecast_io import read_forecast, write_forecast
    from medalloc_core.allocation.regional import RegionalConfig, plan_region, write_regional_plan, write_shared
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    (tmp_path / "in.csv").write_bytes(fixtures.forecast_csv())
    forecast = read_forecast(tmp_path / "in.csv")
    shared = pd.read_csv(io.BytesIO(fixtures.shared_csv("H000")), parse_dates=["date"])
    plan = plan_region(shared, {"H000": 300.0}, RegionalConfig(scenarios=2))
    region = generate_region(RegionConfig(hospitals=1, days=28, warmup_days=30, specialty_centres=0))
    _fail_rename(monkeypatch)
    out = tmp_path / "out"
    for write in (
        lambda: write_forecast(forecast, out / "forecast.csv"),
        lambda: write_shared(shared, out / "shared.csv"),
        lambda: write_regional_plan(plan, out / "region"),
        lambda: write_region(region, out / "generated"),
    ):
        with pytest.raises(OSError, match="No space left"):
            write()
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_a_failed_plan_write_keeps_the_previous_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, data in _allocate().items():
        (tmp_path / name).write_bytes(data)
    args = ["allocate", "--forecast", str(tmp_path / "forecast.csv"), "--capacity", str(tmp_path / "capacity.csv"),
            "--out", str(tmp_path / "plan")]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "plan").iterdir()}
    _fail_rename(monkeypatch)
    result = CliRunner().invoke(app, [*args, "--force", "--under-cost", "50"])
    assert result.exit_code == 2 and "cannot write the plan" in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "plan").iterdir()} == before
