"""`medalloc audit`: empirical privacy audit of the DP training path (membership inference + one-run canary audit)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from medalloc.cli.tables import Table

if TYPE_CHECKING:
    from medalloc_core.forecast.audit import AuditReport

# torch, Opacus and the training code load only when the command runs: every other command
# (and `medalloc --help`) starts without them.

REPORT_NAME = "audit.json"
PATIENT_REPORT_NAME = "patient-audit.json"
CANARIES_NAME = "canaries.csv"
FIGURE_NAME = "canary-losses.png"
LEDGER_NAME = "audit-ledger.json"  # = medalloc_core.forecast.audit.LEDGER_NAME (checked by the tests)
_OUTPUTS = (REPORT_NAME, PATIENT_REPORT_NAME, CANARIES_NAME, FIGURE_NAME, LEDGER_NAME)


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class _OwnHospitalWarnings(logging.Filter):
    """Drops (and counts) the library's warnings while the audit runs its own synthetic hospitals.

    The audit trains on hospitals it generates itself; their warnings (census over capacity on
    some synthetic day, a seeded replay's "NOT private" notice, ...) are about those fixtures,
    never about the person's data, and at 70 lines they buried the audit's tables. Errors pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("medalloc") and record.levelno < logging.ERROR:
            self.hidden += 1
            return False
        return True


@contextlib.contextmanager
def _quiet_own_hospitals() -> Iterator[_OwnHospitalWarnings]:
    """Hide library warnings on the root logger's handlers for the audit's runs (not with ``medalloc -v``)."""
    root = logging.getLogger()
    quiet = _OwnHospitalWarnings()
    handlers = [] if root.isEnabledFor(logging.DEBUG) else list(root.handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield quiet
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _table(report: AuditReport) -> Table:
    """One row per trained model: what the attack achieved and what the ledger says."""
    s = report.setting
    table = Table(
        title=(
            f"Privacy audit: {s.canaries} canaries, {s.real_windows} real windows, "
            f"MLP {s.layers}x{s.hidden}, {s.epochs} epochs (seed {s.seed})"
        )
    )
    table.add_column("run", no_wrap=True)
    for name in (
        "steps",
        "ledger ε",
        "canary AUC",
        f"TPR at {s.low_fpr:.0%} FPR",
        "real AUC",
        "v/r",
        f"ε lower bound ({1 - s.beta:.0%})",
    ):
        table.add_column(name, justify="right")
    for run in (report.no_dp, report.dp):
        table.add_row(
            run.label,
            str(run.steps),
            "∞" if run.ledger_epsilon is None else f"{run.ledger_epsilon:.2f}",
            f"{run.canary_auc:.3f}",
            f"{run.canary_tpr_at_low_fpr:.3f}",
            f"{run.real_auc:.3f}",
            f"{run.one_run.correct}/{run.one_run.guesses}",
            f"{run.epsilon_lower_bound:.2f}",
        )
    table.caption = (
        f"ε at δ={report.dp.delta:g}; v/r: right guesses of r canary guesses; the lower bound is "
        f"Steinke-Nasr-Jagielski (2023) at confidence 1-β={1 - s.beta:.0%}, best of "
        f"{report.dp.one_run.choices} guess counts (Bonferroni); "
        "AUC: loss-threshold membership inference (0.5 = chance) on canaries and on real windows"
    )
    return table


def _patient_table(audit: Any, console: Console) -> None:
    """The patient-level audit: what each attack found, against the node's ledger epsilon."""
    table = Table(
        title=f"Patient-level audit: ε per patient (stays up to {audit.max_stay_days} nights) {audit.epsilon:.3f}, "
        f"δ {audit.delta:g}, the node's source release"
    )
    for column in ("attack", "measured", "without protection", "verdict"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    table.add_row(
        "coordinator replays a round (max |diff| of arrays)",
        f"{audit.replay_diff_secure:.3g}",
        f"{audit.replay_diff_seeded:.3g} (seeds it knows)",
        "PASS: replay fails" if audit.replay_fails else "FAIL",
    )
    table.add_row(
        f"{audit.canaries} canary stays, ε lower bound (95%)",
        f"{audit.canary_bound:.2f} (AUC {audit.canary_auc:.2f})",
        f"{audit.canary_bound_power:.2f} (no noise)",
        "PASS" if audit.sound and audit.powerful else "FAIL",
    )
    table.add_row(
        f"membership via eval replies, {audit.eval_trials} nodes (AUC)",
        f"{audit.eval_auc_released:.2f}",
        f"{audit.eval_auc_true_counts:.2f} (true counts)",
        "PASS" if audit.eval_near_chance else "FAIL",
    )
    console.print(table)


def _release_table(checks: Any, console: Console) -> None:
    """The release's own checks (medalloc_core.forecast.release_audit): noise calibration and the public calendar."""
    table = Table(title="Release checks: the node's noise and calendar code on a synthetic encounter hospital")
    for column in ("check", "measured", "claimed", "verdict"):
        table.add_column(column, justify="left" if column == "check" else "right")
    noise = checks.noise
    table.add_row(
        "noise sd per column (upper 1-1e-6 limit / claimed)",
        ", ".join(f"{c} {v:.2f}" for c, v in noise.measured_sd.items()) + f" (ratio {noise.lowest_ratio:.3f})",
        ", ".join(f"{c} {v:.2f}" for c, v in noise.claimed_sd.items()),
        "PASS" if noise.passed else f"FAIL: the measured noise gives ε {noise.measured_epsilon:.2f}",
    )
    for case, same in checks.calendar.cases.items():
        table.add_row(
            f"calendar, one extra stay {case}",
            "same grid" if same else "grid changed",
            "same grid",
            "PASS" if same else "FAIL",
        )
    console.print(table)


def _verdict(report: AuditReport, console: Console) -> None:
    dp, no_dp = report.dp, report.no_dp
    assert dp.ledger_epsilon is not None
    mark = "[green]PASS[/]" if report.sound else "[bold red]FAIL[/]"
    console.print(
        f"soundness {mark}: DP lower bound {dp.epsilon_lower_bound:.2f} "
        f"{'<=' if report.sound else '>'} ledger ε {dp.ledger_epsilon:.2f}",
        highlight=False,
    )
    mark = "[green]PASS[/]" if report.powerful else "[bold red]FAIL[/]"
    console.print(
        f"power     {mark}: no-DP lower bound {no_dp.epsilon_lower_bound:.2f} "
        f"(needs >= 1 and > the DP run's {dp.epsilon_lower_bound:.2f})",
        highlight=False,
    )


def _write_canaries(path: Path, report: AuditReport, included: list[bool]) -> None:
    with path.open("x", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["canary", "included", "loss_no_dp", "loss_dp"])
        for i, (inc, a, b) in enumerate(
            zip(included, report.no_dp.canary_losses, report.dp.canary_losses, strict=True)
        ):
            writer.writerow([i, int(inc), f"{a:.6g}", f"{b:.6g}"])


def _write_figure(path: Path, report: AuditReport, included: list[bool]) -> None:
    """Histograms of canary losses, included vs excluded, for both runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mask = np.asarray(included)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, run in zip(axes, (report.no_dp, report.dp), strict=True):
        losses = np.asarray(run.canary_losses)
        bins = np.linspace(0, losses.max() * 1.02, 40)
        ax.hist(losses[mask], bins=bins, alpha=0.6, label="included (trained on)")
        ax.hist(losses[~mask], bins=bins, alpha=0.6, label="excluded")
        eps = "" if run.ledger_epsilon is None else f", ledger ε={run.ledger_epsilon:.1f}"
        ax.set_title(f"{run.label}\nAUC={run.canary_auc:.3f}, ε ≥ {run.epsilon_lower_bound:.2f}{eps}", fontsize=9)
        ax.set_xlabel("canary pinball loss (scaled)")
    axes[0].set_ylabel("canaries")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def audit(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Smaller setting (600 canaries, ~10 s of CPU) instead of the default one (1500 canaries, ~25 s).",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for audit.json, canaries.csv, canary-losses.png and the DP run's ledger."
    ),
    seed: int | None = typer.Option(None, "--seed", "-s", help="Seed for data, canaries and training (default 0)."),
    # Defaults = medalloc_core.forecast.audit.DEFAULT_AUDIT_DP (checked by the tests).
    noise_multiplier: float = typer.Option(1.0, "--noise-multiplier", help="σ of the DP run (project default 1.0)."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Clipping norm C of the DP run (default 1.0)."),
    window: bool = typer.Option(
        False, "--window/--no-window", help="Also run the window-level DP-SGD audit (research; nodes do not use it)."
    ),
) -> None:
    """Audit DP training empirically: train with and without DP on canaries, attack both, compare with the ledger.

    First the node's patient-level guarantee (what a hospital relies on): the coordinator's
    replay of a round must fail, canary stays through the node's source release must not prove
    more than the ledger's epsilon, membership inference through evaluation replies must stay
    near chance.

    Then the release's own checks: its measured noise against the plan (fails at noise 10 % too
    small) and its calendar with and without one extra stay. The window-level DP-SGD audit runs
    only with ``--window`` (research: nodes do not ship it).

    Exit status 0 when every check passes (sound: lower bounds at most the ledger's epsilon;
    powerful: without noise the same attacks prove >= 1; evaluation replies near chance; noise
    and calendar checks); 1 when any one fails; 2 on bad arguments.
    """
    console = Console(stderr=True)
    # `not 0 < x < inf` also refuses NaN, which every comparison fails.
    if not 0 < noise_multiplier < math.inf:
        _fail(
            console,
            f"--noise-multiplier must be a finite number > 0, got {noise_multiplier}; "
            "the non-private run is always included",
        )
    if not 0 < max_grad_norm < math.inf:
        _fail(console, f"--max-grad-norm must be a finite number > 0, got {max_grad_norm}")
    if seed is not None and seed < 0:
        _fail(console, f"--seed must be >= 0, got {seed}")
    if out is not None:
        if out.exists() and not out.is_dir():
            _fail(console, f"--out {out} is a file; give a directory")
        earlier = [name for name in _OUTPUTS if (out / name).exists()]
        if earlier:
            _fail(console, f"{out} already holds audit results ({', '.join(earlier)}); choose another --out")
    from medalloc_core.forecast.audit import DEFAULT_AUDIT_DP, FULL_SETTING, QUICK_SETTING, run_audit
    from medalloc_core.forecast.training import DPConfig

    setting = QUICK_SETTING if quick else FULL_SETTING
    if seed is not None:
        setting = replace(setting, seed=seed)
    dp = DPConfig(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        delta=DEFAULT_AUDIT_DP.delta,
        accountant=DEFAULT_AUDIT_DP.accountant,
    )

    from medalloc.simulations.patient_audit import run_patient_audit
    from medalloc_core.forecast.release_audit import run_release_checks

    with _quiet_own_hospitals() as quiet:
        with console.status("patient-level audit: replay, canary stays, evaluation replies"):
            patient = run_patient_audit(quick=quick, seed=seed or 0)
        _patient_table(patient, Console())
        with console.status("release checks: noise calibration, public calendar"):
            release = run_release_checks(seed=seed or 0)
        _release_table(release, Console())
    if quiet.hidden:
        console.print(
            f"({quiet.hidden} warnings about the audit's own synthetic hospitals hidden; `medalloc -v audit` shows "
            "them)",
            highlight=False,
            markup=False,
        )
    node_passed = patient.passed and release.passed
    if not window:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / PATIENT_REPORT_NAME).write_text(
                json.dumps(patient.to_dict() | {"release_checks": release.to_dict()}, indent=2) + "\n"
            )
        if not node_passed:
            raise typer.Exit(code=1)
        return

    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def stage(description: str) -> None:
            bar.update(task, description=description)

        if out is None:
            with tempfile.TemporaryDirectory(prefix="medalloc-audit-") as scratch:
                report = run_audit(setting, workdir=Path(scratch), dp=dp, progress=stage)
        else:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                _fail(console, f"cannot create --out {out}: {exc}")
            report = run_audit(setting, workdir=out, dp=dp, progress=stage)

    Console().print(_table(report))
    _verdict(report, Console())
    if out is not None:
        included = list(report.canary_included)
        with (out / REPORT_NAME).open("x") as handle:  # "x": never overwrite a saved result
            handle.write(json.dumps(report.to_dict(), indent=2) + "\n")
        (out / PATIENT_REPORT_NAME).write_text(
            json.dumps(patient.to_dict() | {"release_checks": release.to_dict()}, indent=2) + "\n"
        )
        _write_canaries(out / CANARIES_NAME, report, included)
        _write_figure(out / FIGURE_NAME, report, included)
        console.print(
            f"wrote {REPORT_NAME}, {CANARIES_NAME}, {FIGURE_NAME} and {LEDGER_NAME} to {out}",
            highlight=False,
            markup=False,
        )
    if not (report.sound and report.powerful and node_passed):
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the ``medalloc`` app."""
    app.command("audit")(audit)
