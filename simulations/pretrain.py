"""Reproduce the shipped public weights of the hybrid forecaster (medalloc_core/forecast/pretrained/hybrid-v2.*).

    python -m simulations.pretrain [--out DIR] [--quick]

Trains on synthetic series only — no hospital's records, so no privacy cost: synthetic regions
from the project's generator with settings drawn from wide ranges (sizes 10-1,500 beds, no to
double seasonality, no to strong epidemics, 200-800 days, smooth to overdispersed counts), plus
generic count processes unlike the generator (random weekly profiles, trends, AR noise, level
shifts, a length-of-stay convolution for census-like series), so the network does not learn
one generator's habits. Every window carries the weekly means of the 28 weeks before it (the
hybrid's level is smoothed from them: ``ForecasterConfig.level = "weeks"``). A few minutes on
one CPU thread.

The privacy_frontier family "regional waves (unseen)" is built outside these ranges (epidemic
amplitude 1.5, waves every 45-90 days, R0 2.6-3.2, lags up to 28 days): keep it outside when
widening them (tests/test_privacy_frontier_benchmark.py checks it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, DISCHARGES, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import WindowSet, WindowSpec, hybrid_context, prepare_hospital
from medalloc_core.forecast.forecasters import pooled_windows
from medalloc_core.forecast.models import ForecasterConfig, build_model, level_for
from medalloc_core.forecast.pretrained import PRETRAINED_NAME
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.synthetic import RegionConfig, generate_region

logger = logging.getLogger(__name__)

VERSION = "2"  # 2: the level smoothed from the weekly means (1: the last week's mean)
HISTORY, HORIZON = 28, 14  # four weeks in, two weeks out: fits a 100-day clinic and the federation's default
HIDDEN, LAYERS = 64, 1  # ~4.6k parameters: small enough that DP fine-tuning adds little noise per coordinate
SEED = 20240601  # the corpus and training seed; benchmark regions use other seeds
STRIDE = 3  # one window every 3 days: neighbouring windows are near-duplicates


def _records(frame: pd.DataFrame, name: str) -> UnitRecords:
    return UnitRecords(frame.sort_values([UNIT, DATE]).reset_index(drop=True), Frequency.DAILY, Path(name), "daily")


def generator_regions(n: int, rng: np.random.Generator) -> list[UnitRecords]:
    """``n`` synthetic regions with settings drawn from wide ranges; one UnitRecords per hospital."""
    out = []
    for r in range(n):
        config = RegionConfig(
            hospitals=int(rng.integers(3, 9)),
            days=int(rng.integers(200, 800)),
            seed=int(rng.integers(1 << 30)),
            start=f"20{int(rng.integers(10, 24))}-{int(rng.integers(1, 13)):02d}-01",
            min_beds=int(rng.integers(10, 60)),
            max_beds=int(rng.integers(100, 1500)),
            seasonality_scale=float(rng.uniform(0, 2)),
            winter_peak_doy=int(rng.integers(1, 366)),
            epidemic_amplitude=float(rng.uniform(0, 0.8)),
            dispersion=float(rng.uniform(5, 100)),
            short_history_fraction=float(rng.uniform(0, 0.6)),
            noisy_fraction=float(rng.uniform(0, 0.5)),
        )
        for h in generate_region(config).hospitals:
            out.append(_records(h.daily[[DATE, UNIT, ADMISSIONS, DISCHARGES, CENSUS]], f"region{r}-{h.hospital_id}"))
    return out


def generic_series(n: int, rng: np.random.Generator) -> list[UnitRecords]:
    """``n`` hospitals of generic count processes (not the generator): admissions and a census-like convolution."""
    out = []
    for i in range(n):
        days = int(rng.integers(120, 600))
        dates = pd.date_range(
            f"20{int(rng.integers(10, 24))}-{int(rng.integers(1, 13)):02d}-01", periods=days, freq="D"
        )
        frames = []
        for u in range(int(rng.integers(1, 4))):
            level = math.exp(rng.uniform(math.log(0.5), math.log(300)))
            profile = np.clip(1 + rng.uniform(0, 0.5) * rng.standard_normal(7), 0.1, None)
            profile /= profile.mean()
            t = np.arange(days)
            trend = np.exp(rng.uniform(-0.8, 0.8) * t / days)
            ar, phi, sd = np.zeros(days), rng.uniform(0.3, 0.97), rng.uniform(0.01, 0.2)
            shocks = rng.standard_normal(days) * sd
            for k in range(1, days):
                ar[k] = phi * ar[k - 1] + shocks[k]
            shift = np.ones(days)
            for _ in range(int(rng.integers(0, 3))):
                shift[int(rng.integers(0, days)) :] *= rng.uniform(0.5, 1.7)
            mu = level * profile[dates.day_of_week.to_numpy()] * trend * np.exp(ar) * shift
            admissions = rng.poisson(mu)
            stay = rng.uniform(1.5, 9.0)  # mean length of stay: census = admissions convolved with a geometric stay
            kernel = (1 - 1 / stay) ** np.arange(int(6 * stay) + 1)
            census = np.rint(np.convolve(admissions, kernel)[:days]).astype(np.int64)
            frames.append(
                pd.DataFrame({DATE: dates, UNIT: f"u{u}", ADMISSIONS: admissions.astype(np.int64), CENSUS: census})
            )
        out.append(_records(pd.concat(frames, ignore_index=True), f"generic{i}"))
    return out


def corpus_windows(hospitals: list[UnitRecords], *, stride: int = STRIDE) -> WindowSet:
    """Every window of every series (window scaling), one each ``stride`` days, pooled."""
    sets = []
    for records in hospitals:
        for target in (t for t in (ADMISSIONS, DISCHARGES, CENSUS) if t in records.count_columns):
            spec = WindowSpec(
                history=HISTORY,
                horizon=HORIZON,
                targets=(target,),
                val_periods=HORIZON,
                test_periods=HORIZON,
                scaling="window",
                context=hybrid_context(),
            )
            try:
                ds = prepare_hospital(records, spec)
            except ValueError:
                continue  # a unit too short for one window: skip the hospital's column
            for part in (ds.train, ds.val, ds.test):
                keep = np.arange(len(part)) % stride == 0
                sets.append(part.select(keep))
    return pooled_windows(sets)


def pretrain(
    *, regions: int = 40, generic: int = 120, epochs: int = 4, seed: int = SEED
) -> tuple[torch.nn.Module, dict]:
    """Build the corpus and train the hybrid network on it; returns the model and its metadata."""
    rng = np.random.default_rng(seed)
    began = time.perf_counter()
    hospitals = generator_regions(regions, rng) + generic_series(generic, rng)
    windows = corpus_windows(hospitals)
    logger.info("corpus: %d hospitals, %d windows (%.0f s)", len(hospitals), len(windows), time.perf_counter() - began)
    config = ForecasterConfig(
        model="hybrid",
        history=HISTORY,
        horizon=HORIZON,
        n_features=3 + len(hybrid_context()),
        n_targets=1,
        hidden=HIDDEN,
        layers=LAYERS,
        context=len(hybrid_context()),
        level=level_for("hybrid", hybrid_context()),
    )
    model = build_model(config, seed=seed)
    result = train_local(model, windows, config=TrainConfig(epochs=epochs, batch_size=512, lr=2e-3, seed=seed))
    info = {
        "name": PRETRAINED_NAME,
        "version": VERSION,
        "config": config.to_dict(),
        "corpus": {
            "generator_regions": regions,
            "generic_hospitals": generic,
            "windows": len(windows),
            "stride_days": STRIDE,
            "seed": seed,
        },
        "training": {
            "epochs": epochs,
            "batch_size": 512,
            "lr": 2e-3,
            "optimizer": "adam",
            "final_loss": round(result.loss, 5),
            "steps": result.steps,
        },
        "reproduce": "python -m simulations.pretrain",
    }
    return model, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("medalloc_core/forecast/pretrained"),
        help="folder for the .safetensors and .json",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small corpus and one epoch (a smoke run; not the shipped weights)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    from safetensors.torch import save

    from medalloc_core.atomic import atomic_write_bytes

    model, info = pretrain(regions=4, generic=10, epochs=1) if args.quick else pretrain()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{PRETRAINED_NAME}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state, metadata={"name": PRETRAINED_NAME, "version": VERSION}))
    atomic_write_bytes(args.out / f"{PRETRAINED_NAME}.json", (json.dumps(info, indent=2) + "\n").encode())
    logger.info("wrote %s (%d bytes) and %s.json", weights, weights.stat().st_size, PRETRAINED_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
