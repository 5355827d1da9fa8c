"""Are the forecast explanations faithful? Deletion curves of attributions against random deletion orders.

Run: ``python -m simulations.benchmarks.explain_faithfulness [--hospitals 4 --windows 12 --seed 0]``.

A synthetic region is generated, one forecaster per architecture (MLP, TCN) is trained on the
pooled training windows (no DP: this measures the explanations, not the model), and every
unit's held-out test windows are explained for the P90 of census. For each window and each
attribution source, the input cells are deleted (set to the unit's average training window)
largest |attribution| first, and the area under |change of the P90| is compared with the same
area for 20 random orders. Rows:

- ``integrated-gradients`` and ``occlusion``: the two methods ``medalloc explain`` offers;
- ``control: random map``: a random attribution map (what a meaningless explanation scores);
- ``control: |x - baseline|``: how far each cell is from the baseline, no model at all — how
  much of a ratio above 1 comes from the inputs alone (integrated gradients multiply by it);
- ``control: untrained model``: integrated gradients of the same architecture before training
  (attributions of a model that has learnt nothing);
- ``control: other model``: integrated gradients of a differently seeded model trained on the
  same data (plausible attributions, but not this model's).

``ratio`` = mean area (attribution order) / mean area (random orders): above 1 the
attributions find the inputs the model uses; ``wins`` = share of windows where the attribution
order beats the random orders. Printed side by side in one run; the numbers go to docs/explain.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from medalloc_core.contract import CENSUS, Frequency, UnitRecords
from medalloc_core.forecast.explain.attribution import ForecastFunction, attribute
from medalloc_core.forecast.explain.faithfulness import deletion_curve
from medalloc_core.forecast.features import HospitalDataset, federation_window_spec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.synthetic import RegionConfig, generate_region

logger = logging.getLogger(__name__)
SOURCES = (
    "integrated-gradients",
    "occlusion",
    "control: random map",
    "control: |x - baseline|",
    "control: untrained model",
    "control: other model",
)


@dataclass
class _Tally:
    attributed: list[float]
    random: list[float]
    reversed: list[float]
    seconds: float = 0.0

    @classmethod
    def empty(cls) -> _Tally:
        return cls([], [], [])


def _region(hospitals: int, days: int, seed: int) -> list[tuple[str, UnitRecords]]:
    config = RegionConfig(hospitals=hospitals, days=days, seed=seed, short_history_fraction=0.0, max_beds=600)
    out = []
    for h in generate_region(config).hospitals:
        frame = h.daily.sort_values(["unit", "date"]).reset_index(drop=True)
        frame = frame[["date", "unit", "admissions", "discharges", "census"]]
        out.append((h.hospital_id, UnitRecords(frame=frame, frequency=Frequency.DAILY, source=None, shape="daily")))  # type: ignore[arg-type]
    return out


def _train(config: ForecasterConfig, datasets: list[HospitalDataset], seed: int, epochs: int) -> torch.nn.Module:
    from medalloc_core.forecast.features import WindowSet

    pooled = WindowSet(
        torch.cat([d.train.X for d in datasets]),
        torch.cat([d.train.y for d in datasets]),
        np.concatenate([d.train.units for d in datasets]),
        np.concatenate([d.train.target_start for d in datasets]),
    )
    model = build_model(config, seed=seed)
    train_local(model, pooled, config=TrainConfig(epochs=epochs, batch_size=64, lr=0.005, seed=seed))
    model.eval()
    return model


def run(hospitals: int, windows: int, seed: int, epochs: int, console: Console) -> None:
    torch.set_num_threads(1)
    spec = federation_window_spec(history=28, horizon=14, targets=("admissions", CENSUS))
    region = _region(hospitals, 500, seed)
    datasets = [prepare_hospital(records, spec) for _, records in region]
    table = Table(title=f"Deletion check: P90 of census, {hospitals} hospitals' test windows (≤ {windows} per unit)")
    for column in (
        "model",
        "attributions",
        "windows",
        "area: attribution order",
        "area: random",
        "area: reversed",
        "ratio",
        "wins",
        "ms / window",
    ):
        table.add_column(column, justify="left" if column in ("model", "attributions") else "right")
    for architecture in ("mlp", "tcn"):
        config = ForecasterConfig.for_spec(spec, model=architecture, hidden=32)
        began = time.perf_counter()
        model = _train(config, datasets, seed, epochs)
        other = _train(config, datasets, seed + 1, epochs)
        untrained = build_model(config, seed=seed + 2).eval()
        console.print(f"{architecture}: trained two models in {time.perf_counter() - began:.0f} s", highlight=False)
        tallies = {s: _Tally.empty() for s in SOURCES}
        rng = np.random.default_rng(seed)
        t_index, q_index = 1, len(config.quantiles) - 1
        for dataset in datasets:
            test = dataset.test
            for unit in np.unique(test.units):
                rows = np.flatnonzero(test.units == unit)
                rows = rows[np.linspace(0, len(rows) - 1, min(windows, len(rows))).round().astype(int)]
                baseline = dataset.train.X[dataset.train.units == unit].mean(dim=0).numpy()
                assert dataset.scaler is not None, "mlp and tcn scale by series"
                scaler = (float(dataset.scaler.mean[unit][t_index]), float(dataset.scaler.scale[unit][t_index]))
                fn = ForecastFunction(
                    model, target_index=t_index, quantile_index=q_index, mean=scaler[0], scale=scaler[1]
                )
                fn_other = ForecastFunction(
                    other, target_index=t_index, quantile_index=q_index, mean=scaler[0], scale=scaler[1]
                )
                fn_untrained = ForecastFunction(
                    untrained, target_index=t_index, quantile_index=q_index, mean=scaler[0], scale=scaler[1]
                )
                for row in rows:
                    x = test.X[row].numpy()
                    for source in SOURCES:
                        began = time.perf_counter()
                        if source == "control: random map":
                            scores = rng.standard_normal(x.shape)
                        elif source == "control: |x - baseline|":
                            scores = np.abs(x - baseline)
                        elif source == "control: other model":
                            scores = attribute(fn_other, x, baseline).values
                        elif source == "control: untrained model":
                            scores = attribute(fn_untrained, x, baseline).values
                        else:
                            scores = attribute(fn, x, baseline, method=source).values
                        curve = deletion_curve(fn, x, baseline, scores, seed=int(rng.integers(1 << 31)))
                        tally = tallies[source]
                        tally.seconds += time.perf_counter() - began
                        tally.attributed.append(curve.area_attributed)
                        tally.random.append(curve.area_random)
                        tally.reversed.append(curve.area_reversed)
        for source, t in tallies.items():
            a, r, v = np.array(t.attributed), np.array(t.random), np.array(t.reversed)
            table.add_row(
                architecture,
                source,
                str(len(a)),
                f"{a.mean():.3f}",
                f"{r.mean():.3f}",
                f"{v.mean():.3f}",
                f"{a.mean() / r.mean():.2f}",
                f"{(a > r).mean():.0%}",
                f"{1000 * t.seconds / max(len(a), 1):.0f}",
            )
    table.caption = (
        "area: mean over windows of ∫ |ΔP90| d(fraction deleted), in beds; deleted cells take the unit's average "
        "training window; random = mean of 20 random orders per window. ratio > 1 and wins > 50 %: the attributions "
        "point at what the model uses."
    )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=4)
    parser.add_argument("--windows", type=int, default=12, help="test windows explained per unit")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    console = Console(width=150)
    began = time.perf_counter()
    run(args.hospitals, args.windows, args.seed, args.epochs, console)
    console.print(f"total {time.perf_counter() - began:.0f} s", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
