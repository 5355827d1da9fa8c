"""Patient-level privacy: what each mechanism costs in accuracy on the default scenario, side by side.

Run ``python -m simulations.benchmarks.patient_privacy`` (about a minute, one thread). Every method
trains the default MLP with in-process FedAvg (the default scenario's rounds, epochs, batch and
learning rate) and is scored on the TRUE test windows of the five default hospitals, volume-
weighted, next to Holt-Winters and seasonal naive on the same windows:

- no privacy (true counts);
- the source release at patient-level epsilon 0.5, 1, 2, 4 (delta 1e-6, stays <= 14 nights):
  each node's counts released once with Gaussian noise, training on them is post-processing;
  forecasts read true inputs (what a node does locally), bands freed of the release noise;
- patient-level DP-SGD at epsilon 1 and 4 (stride sampling, at most one window of a stay per unit
  per step, accounted as ``(sigma / 4, 1 - (1 - p)^2, steps)``; ``medalloc_core.privacy.patient``).

The noise here is seeded (research run, so the table repeats); a node draws it from the OS CSPRNG.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from medalloc_core.contract import ADMISSIONS, CENSUS, Frequency, UnitRecords
from medalloc_core.forecast.features import HospitalDataset, federation_window_spec, prepare_hospital
from medalloc_core.forecast.models import Forecaster, ForecasterConfig, build_model
from medalloc_core.forecast.training import LinearClipper, TrainConfig, train_local
from medalloc_core.privacy.accounting import noise_multiplier_for
from medalloc_core.privacy.patient import as_tensor_batches, expected_batch, stride, stride_batches
from medalloc_core.privacy.release import ReleasePlan, release_records
from medalloc_core.synthetic import RegionConfig, generate_region
from medalloc_core.tasks.forecasting import comparisons as cmp
from medalloc_core.tasks.forecasting.local import LocalData, test_forecasts

logger = logging.getLogger(__name__)

DELTA, STAY, ROUNDS, EPOCHS, BATCH, LR, SEED = 1e-6, 14, 5, 2, 256, 0.01, 0
L, H = 56, 14
DP_SGD_STEPS, DP_SGD_KEEP = 100, 0.5  # per node over the whole run (20 per round)


def _fedavg(config: ForecasterConfig, local: list[WindowSetTrainer]) -> Forecaster:
    model = build_model(config, seed=SEED)
    for r in range(ROUNDS):
        states, weights = [], []
        for i, train in enumerate(local):
            copy_ = copy.deepcopy(model)
            weights.append(train(copy_, r, i))
            states.append(copy_.state_dict())
        w = np.asarray(weights, dtype=float) / sum(weights)
        model.load_state_dict({k: sum(wi * s[k] for wi, s in zip(w, states, strict=True)) for k in states[0]})
    return model


class WindowSetTrainer:
    """One node's local round: plain training on its (released) windows, or patient-level DP-SGD."""

    def __init__(self, dataset: HospitalDataset, *, sigma: float | None = None) -> None:
        self.dataset, self.sigma = dataset, sigma

    def __call__(self, model: Forecaster, round_: int, node: int) -> int:
        train = self.dataset.train
        if self.sigma is None:
            config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED * 1000 + round_ * 10 + node)
            train_local(model, train, config=config)
            return len(train)
        rng = np.random.default_rng([SEED, round_, node])
        s = stride(history=L, horizon=H, max_stay_days=STAY)
        starts = train.target_start.astype("datetime64[D]").astype(np.int64)
        batches = stride_batches(
            train.units, starts, stride_days=s, keep_rate=DP_SGD_KEEP, steps=DP_SGD_STEPS // ROUNDS, rng=rng
        )
        divisor = max(1.0, expected_batch(train.units, stride_days=s, keep_rate=DP_SGD_KEEP))
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        clipper = LinearClipper(model)
        noise = torch.Generator().manual_seed(int(rng.integers(2**31)))
        try:
            for x, y in as_tensor_batches(train.X, train.y, batches):
                sums, _ = clipper.clipped_sum(x, y, tuple(model.config.quantiles), 1.0)
                for p, g in zip(model.parameters(), sums, strict=True):
                    p.grad = (g + torch.randn(g.shape, generator=noise) * self.sigma) / divisor
                optimizer.step()
        finally:
            clipper.close()
        return len(train)


def _score(forecast: tuple[np.ndarray, np.ndarray], quantiles: tuple[float, ...]) -> dict[str, object]:
    y, q = forecast
    return cmp.score(y, q, quantiles)


def main() -> None:
    """Train and score every method; print one table."""
    console = Console()
    torch.set_num_threads(1)
    began = time.perf_counter()
    region = generate_region(RegionConfig(hospitals=5, days=730, seed=0, short_history_fraction=0.4))
    spec = federation_window_spec(history=L, horizon=H, targets=(ADMISSIONS, CENSUS))
    config = ForecasterConfig.for_spec(spec, model="mlp", hidden=64)
    quantiles = tuple(config.quantiles)
    truth: dict[str, LocalData] = {}
    for hospital in region.hospitals:
        records = UnitRecords(hospital.daily, Frequency.DAILY, Path(hospital.hospital_id), "daily")
        truth[hospital.hospital_id] = LocalData(records, prepare_hospital(records, spec))
    rows: dict[str, dict[str, dict[str, object]]] = {}
    settings: dict[str, str] = {}

    model = _fedavg(config, [WindowSetTrainer(d.dataset) for d in truth.values()])
    rows["no privacy"] = {h: _score(test_forecasts(model, d.dataset), quantiles) for h, d in truth.items()}
    settings["no privacy"] = "true counts"
    for eps in (0.5, 1.0, 2.0, 4.0):
        plan = ReleasePlan.calibrate(epsilon=eps, delta=DELTA, max_stay_days=STAY)
        rng = np.random.default_rng(SEED)
        released: dict[str, cmp.ReleasedHospital] = {}
        for h, d in truth.items():
            rel = release_records(d.records, plan, rng=rng)
            rel_data = LocalData(rel, prepare_hospital(rel, spec))
            true_scaled = LocalData(d.records, prepare_hospital(d.records, spec, scaler=rel_data.dataset.scaler))
            released[h] = cmp.ReleasedHospital(rel_data, true_scaled, plan)
        model = _fedavg(config, [WindowSetTrainer(r.released.dataset) for r in released.values()])
        name = f"source release ε {eps:g}"
        rows[name] = {h: _score(cmp.score_on_truth(model, r), quantiles) for h, r in released.items()}
        settings[name] = f"sd adm {plan.noise_sd[ADMISSIONS]:.1f}, census {plan.noise_sd[CENSUS]:.1f}"
    for eps in (1.0, 4.0):
        keep_q = 1 - (1 - DP_SGD_KEEP) ** 2
        z = noise_multiplier_for(target_epsilon=eps, delta=DELTA, sample_rate=keep_q, steps=DP_SGD_STEPS)
        model = _fedavg(config, [WindowSetTrainer(d.dataset, sigma=4 * z) for d in truth.values()])
        name = f"DP-SGD patient ε {eps:g}"
        rows[name] = {h: _score(test_forecasts(model, d.dataset), quantiles) for h, d in truth.items()}
        settings[name] = f"σ {4 * z:.1f}, {DP_SGD_STEPS} stride-sampled steps"
    for baseline in ("holt_winters", "seasonal_naive"):
        rows[baseline] = {}
        for h, d in truth.items():
            y = d.dataset.to_original(d.dataset.test.y.numpy(), d.dataset.test)
            rows[baseline][h] = cmp.score(y, cmp.baseline_forecasts(baseline, d, quantiles), quantiles)
        settings[baseline] = "true counts, local"

    hw = cmp.overall(rows["holt_winters"])["volume_weighted"]
    table = Table(
        title=f"Patient-level privacy vs accuracy, default scenario (5 hospitals, FedAvg {ROUNDS}x{EPOCHS}, "
        f"δ {DELTA:g}, stays <= {STAY} nights; volume-weighted, true test windows)"
    )
    for column in ("method", "setting", "WAPE", "pinball", "P10-P90 cov.", "WAPE / HW", "pinball / HW"):
        table.add_column(column, justify="left" if column in ("method", "setting") else "right")
    for name, per in rows.items():
        m = cmp.overall(per)["volume_weighted"]
        table.add_row(
            name,
            settings[name],
            f"{m['wape']:.4f}",
            f"{m['pinball']:.3f}",
            f"{m['coverage']:.2f}",
            f"{m['wape'] / hw['wape']:.3f}",
            f"{m['pinball'] / hw['pinball']:.3f}",
        )
    console.print(table)
    console.print(f"({time.perf_counter() - began:.0f} s; noise seeded for a repeatable table: research only)")


if __name__ == "__main__":
    main()
