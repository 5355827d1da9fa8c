"""`medalloc forecast` end to end: a locally trained model, a generated hospital, then `medalloc allocate`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.model_io import save_model
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from medalloc_core.validation import load_unit_records

runner = CliRunner()
SPEC = WindowSpec(history=14, horizon=7, val_periods=14, test_periods=14)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One generated hospital (CSV) and a model trained on it with train_local, saved with model_io."""
    folder = tmp_path_factory.mktemp("region")
    config = RegionConfig(
        hospitals=1,
        days=150,
        seed=4,
        min_beds=40,
        max_beds=80,
        short_history_fraction=0.0,
        specialty_centres=0,
        warmup_days=30,
    )
    data = next(p for p in write_region(generate_region(config), folder) if p.suffix == ".csv")
    records = load_unit_records(data)
    dataset = prepare_hospital(records, SPEC)
    model = build_model(
        ForecasterConfig(history=14, horizon=7, n_features=dataset.n_features, n_targets=2, hidden=16), seed=0
    )
    train_local(model, dataset.train, config=TrainConfig(epochs=3, batch_size=32, lr=0.01))
    return data, save_model(folder / "model" / "final_model.safetensors", model, spec=dataset.spec)


def test_forecast_then_allocate_makes_a_plan(hospital: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = hospital
    out = tmp_path / "fc"
    result = runner.invoke(
        app, ["forecast", "--model", str(model.parent), "--data", str(data), "--out", str(out), "--hospital", "H000"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "forecast.csv", parse_dates=["date"])
    source = pd.read_csv(data, parse_dates=["date"])
    assert list(frame.columns) == ["hospital", "unit", "date", "target", "q", "value"]
    assert set(frame["unit"]) == set(source["unit"])
    assert frame["date"].min() == source["date"].max() + pd.Timedelta(days=1)
    assert frame["date"].nunique() == 7 and set(frame["q"]) == {0.1, 0.5, 0.9}
    # a trained model's median census sits in the range the hospital has seen, not at 0 or 10x
    med = frame[(frame["target"] == "census") & (frame["q"] == 0.5)].groupby("unit")["value"].mean()
    seen = source.groupby("unit")["census"].agg(["min", "max"])
    assert ((med >= 0.5 * seen["min"] - 2) & (med <= 1.5 * seen["max"] + 2)).all(), (med, seen)
    assert (out / "forecast.png").stat().st_size > 10_000

    plan_dir = tmp_path / "plan"
    result = runner.invoke(
        app, ["allocate", "--forecast", str(out / "forecast.csv"), "--capacity-from", str(data), "--out", str(plan_dir)]
    )
    assert result.exit_code == 0, result.output
    plan = pd.read_csv(plan_dir / "plan.csv")
    assert len(plan) == 7 * source["unit"].nunique()
    assert (plan["staffed_beds"] >= 0).all()

    # never overwritten without --force; with it, the same numbers again
    before = (out / "forecast.csv").read_bytes()
    result = runner.invoke(
        app, ["forecast", "--model", str(model), "--data", str(data), "--out", str(out), "--hospital", "H000"]
    )
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(
        app,
        ["forecast", "--model", str(model), "--data", str(data), "--out", str(out), "--hospital", "H000", "--force"],
    )
    assert result.exit_code == 0 and (out / "forecast.csv").read_bytes() == before


def test_bad_data_is_a_clear_error(hospital: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = hospital
    bad = tmp_path / "bad.csv"
    bad.write_text("date,unit,census\n2024-01-01,icu,3\n2024-01-02,icu,minus one\n")
    result = runner.invoke(app, ["forecast", "--model", str(model), "--data", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "row 3" in result.output and "census" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_model_that_does_not_fit_the_data_is_refused(hospital: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = hospital
    # a weekly model (no day-of-week channels) on daily data
    weekly = save_model(
        tmp_path / "weekly.safetensors",
        build_model(ForecasterConfig(history=14, horizon=7, n_features=5, n_targets=2, hidden=8)),
        spec=SPEC,
    )
    result = runner.invoke(app, ["forecast", "--model", str(weekly), "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "weekly" in result.output
    # data without a column the model forecasts
    census_only = tmp_path / "census_only.csv"
    pd.read_csv(data).drop(columns=["admissions"]).to_csv(census_only, index=False)
    result = runner.invoke(
        app, ["forecast", "--model", str(model), "--data", str(census_only), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "admissions" in result.output
    # a history longer than the data holds
    long_spec = WindowSpec(history=140, horizon=7, val_periods=14, test_periods=14)
    long = save_model(
        tmp_path / "long.safetensors", build_model(ForecasterConfig(history=140, horizon=7, hidden=8)), spec=long_spec
    )
    result = runner.invoke(app, ["forecast", "--model", str(long), "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "L=140" in result.output
    # a file that is not a model
    result = runner.invoke(app, ["forecast", "--model", str(data), "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a model file" in result.output
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    result = runner.invoke(
        app, ["forecast", "--model", str(tmp_path / "x.json"), "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "model-config" in result.output
    assert not (tmp_path / "o").exists()


def test_release_calibrates_the_bands_on_the_nodes_validation_days(hospital: tuple[Path, Path], tmp_path: Path) -> None:
    """`--release` gives the bands the evaluation scores: each target's learned band scaled by the factor measured
    on the validation days against the released targets (``forecast.calibration``), the median kept."""
    import numpy as np

    from medalloc_core.forecast.calibration import node_band_factors, scale_bands
    from medalloc_core.model_io import load_model
    from medalloc_core.privacy.release import ReleasePlan, ReleaseStore, release_records

    data, model = hospital
    records = load_unit_records(data)
    plan = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14, columns=("admissions", "census"))
    store = ReleaseStore.open(tmp_path / "ledger.json.released.csv")
    store.add(release_records(records, plan, rng=np.random.default_rng(0)), plan)

    def run(*extra: str) -> pd.DataFrame:
        out = tmp_path / f"fc{len(extra)}"
        args = ["forecast", "--model", str(model), "--data", str(data), "--out", str(out), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return pd.read_csv(out / "forecast.csv").set_index(["unit", "target", "date", "q"])["value"].unstack("q")

    learned, given = run(), run("--release", str(store.path))
    saved = load_model(model)
    factors = node_band_factors(saved.model, saved.spec, records, store.records(), plan.noise_sd)
    k = np.array([factors[list(saved.spec.targets).index(t)] for t in learned.index.get_level_values("target")])
    # (rows, 1 horizon, 1 target, Q): each row scaled by its own target's factor
    expected = np.stack(
        [
            scale_bands(learned.to_numpy()[i][None, None, None], k[i : i + 1], (0.1, 0.5, 0.9))[0, 0, 0]
            for i in range(len(learned))
        ]
    )
    unclipped = (learned[0.1] > 0).to_numpy()  # the frame floors values at 0; compare where nothing was floored
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(given.to_numpy()[unclipped], np.maximum(expected, 0.0)[unclipped], rtol=1e-5, atol=1e-4)
    assert factors.shape == (2,) and (factors > 0).all()
    result = runner.invoke(
        app,
        [
            "forecast",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
            "--release",
            str(tmp_path / "missing.csv"),
        ],
    )
    assert result.exit_code == 2 and "--release" in result.output


def test_zero_shot_weight_mixes_fracasts_quantiles_from_the_same_records(
    hospital: tuple[Path, Path], tmp_path: Path
) -> None:
    """`--zero-shot-weight w`: (1 - w) x the model + w x fracast, level by level, where fracast reads each unit's
    records up to its last day (checked against fracast's own model on the last 512 days), nothing else."""
    import numpy as np

    fracast = pytest.importorskip("fracast")
    data, model = hospital

    def run(weight: float) -> pd.DataFrame:
        out = tmp_path / f"w{weight:g}"
        args = ["forecast", "--model", str(model), "--data", str(data), "--out", str(out)]
        result = runner.invoke(app, [*args, "--zero-shot-weight", f"{weight:g}"])
        assert result.exit_code == 0, result.output
        assert ("fracast" in result.output) == (weight > 0)
        return pd.read_csv(out / "forecast.csv").set_index(["unit", "target", "date", "q"])["value"]

    alone, zero_shot, mixed = run(0), run(1), run(0.5)
    assert not np.allclose(alone.to_numpy(), zero_shot.to_numpy())  # two different models
    np.testing.assert_allclose(mixed.to_numpy(), 0.5 * alone.to_numpy() + 0.5 * zero_shot.to_numpy(), atol=1e-4)

    source = pd.read_csv(data, parse_dates=["date"]).sort_values(["unit", "date"])
    unit = sorted(source["unit"].unique())[0]
    series = source.loc[source["unit"] == unit, "census"].to_numpy(dtype=np.float32)[-512:]
    own = fracast.FracastModel.from_pretrained(weights="w8", device="cpu")
    levels = np.round(np.asarray(own.quantiles), 6)
    expected = own.forecast_batch(series[None, :], horizon=7)[0][
        :, [int(np.argmin(abs(levels - q))) for q in (0.1, 0.5, 0.9)]
    ]
    got = zero_shot.xs((unit, "census"), level=("unit", "target")).unstack("q").to_numpy()
    np.testing.assert_allclose(
        got, np.maximum.accumulate(np.clip(np.sort(expected, axis=-1), 0, None), axis=-1), rtol=1e-4, atol=1e-3
    )

    result = runner.invoke(
        app,
        [
            "forecast",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
            "--zero-shot-weight",
            "1.5",
        ],
    )
    assert result.exit_code == 2 and "zero-shot-weight" in result.output and not (tmp_path / "x").exists()


def test_zero_shot_weight_without_fracast_names_the_extra(
    hospital: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medalloc_core.forecast.forecasters.zeroshot import Fracast

    monkeypatch.setattr(Fracast, "available", staticmethod(lambda: False))  # nothing real can uninstall it here
    data, model = hospital
    out = tmp_path / "o"
    args = ["forecast", "--model", str(model), "--data", str(data), "--out", str(out), "--zero-shot-weight", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "-e '.[zeroshot]'" in result.output and "Traceback" not in result.output
    assert not (out / "forecast.csv").exists()
