"""DP-SGD cost per forecaster and per-sample-gradient mode: step time, peak memory, exactness, accuracy.

Run ``python -m simulations.benchmarks.dp_overhead`` (about 2 minutes) or add ``--quick``
(a few seconds: MLP only, fewer steps). Each (model, mode) pair runs in its own subprocess so
that its peak resident memory (``VmHWM``; ``getrusage``'s ``ru_maxrss`` would keep the parent's peak across
``exec``) is its own: the
plain run goes first, and the DP column is how much *higher* the peak went during the DP run.
Plain and DP runs alternate inside the subprocess, single-threaded (stable ratios on a shared
machine), and the ratio compares medians taken side by side.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import typer
from rich.console import Console
from rich.table import Table

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, DISCHARGES, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import HospitalDataset, WindowSet, WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model, pinball_loss_per_sample
from medalloc_core.forecast.training import DPConfig, TrainConfig, evaluate, train_local

MODES = {"mlp": ["linear", "hooks", "ghost", "ew", "functorch"], "tcn": ["hooks", "ghost", "ew", "functorch"]}
QUICK_MODES = {"mlp": ["linear", "hooks", "ghost"]}
# (windows, epochs, repetitions) per model: the TCN's per-sample modes are slow, so fewer steps.
RUNS = {"mlp": (1024, 3, 5), "tcn": (512, 1, 2)}
QUICK_RUNS = {"mlp": (512, 2, 3)}
BATCH = 64
MAX_GRAD_NORM = 0.1  # small enough that clipping binds on the exactness batch


def toy_records(units: dict[str, float], days: int, seed: int) -> UnitRecords:
    """Seasonal Poisson admissions, Binomial(census, 0.2) discharges, census by the exact flow identity."""
    rng = np.random.default_rng(seed)
    frames = []
    for name, base in sorted(units.items()):
        t = np.arange(days)
        adm = rng.poisson(base * (1 + 0.3 * np.sin(2 * np.pi * t / 7) + 0.2 * np.sin(2 * np.pi * t / 365.25)))
        census, dis, prev = np.zeros(days, np.int64), np.zeros(days, np.int64), int(base * 5)
        for i in range(days):
            dis[i] = rng.binomial(prev, 0.2)
            census[i] = prev = prev + adm[i] - dis[i]
        frames.append(
            pd.DataFrame(
                {
                    DATE: pd.date_range("2023-01-01", periods=days),
                    UNIT: name,
                    ADMISSIONS: adm,
                    DISCHARGES: dis,
                    CENSUS: census,
                }
            )
        )
    return UnitRecords(pd.concat(frames, ignore_index=True), Frequency.DAILY, Path("toy"), "daily")


def dataset() -> HospitalDataset:
    """Three units from 3 to 120 admissions a day, two years: ~1,800 training windows."""
    return prepare_hospital(toy_records({"icu": 3.0, "medical": 30.0, "surgical": 120.0}, 730, seed=0), WindowSpec())


def config(model: str, ds: HospitalDataset) -> ForecasterConfig:
    return ForecasterConfig(
        model=model, history=ds.spec.history or 56, horizon=ds.spec.horizon or 14, n_features=ds.n_features
    )


def _subset(w: WindowSet, n: int) -> WindowSet:
    return WindowSet(w.X[:n], w.y[:n], w.units[:n], w.target_start[:n])


def _maxrss_mb() -> float:
    """This interpreter's peak resident memory (MiB) since its exec, not its parent's before it."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB


def _exactness(model: str, mode: str, ds: HospitalDataset) -> float:
    """Max relative error of DP's clipped gradient sum against a one-sample-at-a-time reference.

    One DP-SGD step with sigma = 0, sample rate 1 (every window in the batch), SGD lr = 1:
    the parameter change is -(sum of clipped per-sample gradients) / n.
    """
    data = _subset(ds.train, 32)
    net = build_model(config(model, ds), seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    rows = []
    for i in range(len(data)):
        net.zero_grad()
        pinball_loss_per_sample(net(data.X[i : i + 1]), data.y[i : i + 1], net.config.quantiles).sum().backward()
        parts = []
        for p in net.parameters():
            assert p.grad is not None, "the loss reaches every parameter"
            parts.append(p.grad.flatten())
        g = torch.cat(parts)
        rows.append(g * min(1.0, MAX_GRAD_NORM / (g.norm().item() + 1e-6)))
    net.zero_grad(set_to_none=True)
    reference = torch.stack(rows).sum(0)
    train_local(
        net,
        data,
        config=TrainConfig(epochs=1, batch_size=len(data), lr=1.0, optimizer="sgd"),
        dp=DPConfig(noise_multiplier=0.0, max_grad_norm=MAX_GRAD_NORM, grad_sample_mode=mode, accountant="rdp"),
    )
    got = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())]) * len(data)
    return float((got - reference).abs().max() / reference.abs().max())


def worker(model: str, mode: str, windows: int, epochs: int, reps: int) -> dict[str, float]:
    """Time plain and DP runs alternately; measure peak RSS growth; check exactness.

    A run's step time is the process CPU time of its training loop over its steps
    (Poisson/shuffled batch loading included; single-threaded, so CPU time is compute time and
    other processes on a shared machine barely move it); the reported figure is the best run,
    the usual timeit practice, with the ratio of medians beside it.
    """
    logging.getLogger("medalloc_core").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    ds = dataset()
    data = _subset(ds.train, windows)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode, accountant="rdp")
    plain_t, dp_t = [], []
    train_local(
        build_model(config(model, ds), seed=0), _subset(data, 64), config=TrainConfig(epochs=1, batch_size=BATCH)
    )  # warm-up
    rss0 = _maxrss_mb()
    for r in range(reps):
        res = train_local(build_model(config(model, ds), seed=r), data, config=cfg)
        plain_t.append(res.cpu_seconds / res.steps)
    rss_plain = _maxrss_mb()
    for r in range(reps):
        res = train_local(build_model(config(model, ds), seed=r), data, config=cfg, dp=dp)
        dp_t.append(res.cpu_seconds / res.steps)
        res = train_local(build_model(config(model, ds), seed=r), data, config=cfg)  # side by side
        plain_t.append(res.cpu_seconds / res.steps)
    rss_dp = _maxrss_mb()
    return {
        "plain_ms": 1e3 * min(plain_t),
        "dp_ms": 1e3 * min(dp_t),
        "plain_ms_median": 1e3 * statistics.median(plain_t),
        "dp_ms_median": 1e3 * statistics.median(dp_t),
        "steps": float(res.steps),
        "rss_plain_mb": rss_plain,
        "rss_plain_growth_mb": rss_plain - rss0,
        "rss_dp_extra_mb": rss_dp - rss_plain,
        "max_rel_err": _exactness(model, mode, ds),
    }


def accuracy(epochs: int, seeds: tuple[int, ...] = (0, 1)) -> list[dict[str, float | str]]:
    """Validation/test pinball (scaled) of each model trained plain and with DP (sigma 1.0, C 1.0), mean over seeds."""
    torch.set_num_threads(1)
    ds = dataset()
    rows: list[dict[str, float | str]] = []
    for model in ("mlp", "tcn"):
        for private in (False, True):
            val, test, secs, eps, n_params = [], [], [], float("nan"), 0
            for seed in seeds:
                net = build_model(config(model, ds), seed=seed)
                dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, accountant="prv") if private else None
                res = train_local(
                    net, ds.train, config=TrainConfig(epochs=epochs, batch_size=BATCH, lr=3e-3, seed=seed), dp=dp
                )
                val.append(evaluate(net, ds.val)["pinball"])
                test.append(evaluate(net, ds.test)["pinball"])
                secs.append(res.cpu_seconds)
                eps = res.epsilon_spent_this_call if res.epsilon_spent_this_call is not None else float("nan")
                n_params = sum(p.numel() for p in net.parameters())
            rows.append(
                {
                    "model": model,
                    "dp": "yes" if private else "no",
                    "val_pinball": statistics.mean(val),
                    "test_pinball": statistics.mean(test),
                    "seconds": statistics.mean(secs),
                    "epsilon": eps,
                    "params": float(n_params),
                }
            )
    return rows


app = typer.Typer(add_completion=False)


@app.command()
def main(
    quick: bool = typer.Option(False, "--quick", help="MLP only, fewer steps: a few seconds."),
    worker_spec: str = typer.Option("", "--worker", hidden=True),
) -> None:
    """Print the DP overhead table (and, without --quick, the accuracy table)."""
    if worker_spec:  # subprocess mode: one (model, mode) measurement as JSON on stdout
        name, grad_mode, windows_text, epochs_text, reps_text = worker_spec.split(",")
        print(json.dumps(worker(name, grad_mode, int(windows_text), int(epochs_text), int(reps_text))))
        return
    console = Console()
    modes, runs = (QUICK_MODES, QUICK_RUNS) if quick else (MODES, RUNS)
    console = Console(width=max(console.width, 150))
    table = Table(
        title=f"DP-SGD step cost (batch {BATCH}, sigma 1, C 1, 1 thread, process CPU time per step; "
        "best of N plain/DP runs taken alternately)"
    )
    for col in (
        "model",
        "mode",
        "exact (rel err)",
        "steps x N",
        "plain ms/step",
        "DP ms/step",
        "DP/plain",
        "DP/plain (medians)",
        "peak RSS MB",
        "DP extra RSS MB",
    ):
        table.add_column(col, justify="right" if col not in ("model", "mode") else "left")
    start = time.perf_counter()
    with console.status("measuring...") as status:
        for model, model_modes in modes.items():
            for mode in model_modes:
                status.update(f"measuring {model} / {mode}")
                windows, epochs, reps = runs[model]
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "simulations.benchmarks.dp_overhead",
                        "--worker",
                        f"{model},{mode},{windows},{epochs},{reps}",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    table.add_row(
                        model, mode, "failed", "", "", "", "", "", "", out.stderr.strip().splitlines()[-1][:60]
                    )
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                exact = f"{'yes' if r['max_rel_err'] < 1e-4 else 'NO'} ({r['max_rel_err']:.1e})"
                table.add_row(
                    model,
                    mode,
                    exact,
                    f"{r['steps']:.0f} x {reps}",
                    f"{r['plain_ms']:.2f}",
                    f"{r['dp_ms']:.2f}",
                    f"{r['dp_ms'] / r['plain_ms']:.2f}x",
                    f"{r['dp_ms_median'] / r['plain_ms_median']:.2f}x",
                    f"{r['rss_plain_mb']:.0f}",
                    f"{r['rss_dp_extra_mb']:.1f}",
                )
    console.print(table)
    if not quick:
        with console.status("training for accuracy..."):
            rows = accuracy(epochs=5)
        acc = Table(
            title="Accuracy on the toy region (3 units, 730 days; 5 epochs, batch 64, lr 3e-3; "
            "DP: sigma 1.0, C 1.0; mean of seeds 0, 1)"
        )
        for col in ("model", "dp", "params", "val pinball", "test pinball", "train CPU s", "epsilon (delta 1e-5)"):
            acc.add_column(col)
        for r in rows:
            acc.add_row(
                str(r["model"]),
                str(r["dp"]),
                f"{r['params']:.0f}",
                f"{r['val_pinball']:.4f}",
                f"{r['test_pinball']:.4f}",
                f"{r['seconds']:.1f}",
                "-" if r["dp"] == "no" else f"{r['epsilon']:.2f}",
            )
        console.print(acc)
    console.print(
        f"total {time.perf_counter() - start:.0f} s; "
        f"exact = clipped gradient sum within 1e-4 of a per-sample reference (C={MAX_GRAD_NORM})"
    )


if __name__ == "__main__":
    app()
