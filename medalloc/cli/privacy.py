"""``medalloc privacy``: what a node's privacy ledger says has been spent per patient, and what is left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.tables import Table
from medalloc_core.privacy.ledger import LedgerError, PrivacyLedger

MEANING = (
    "Whether or not any one patient's stay of up to {n} nights is in this hospital's records changes the "
    "probability of anything the node has released, in all its runs together, by at most a factor e^{eps:.3g} "
    "(except with probability {delta:g})."
)


def _longer_stay(ledger: PrivacyLedger) -> dict[str, float] | None:
    """Epsilon of a stay twice the cap, for the node's source release (if it has one and nothing else)."""
    from medalloc_core.privacy.release import ReleasePlan

    spends = ledger.spends()
    if not spends or ledger.max_stay_days is None or any(s.mechanism != "source-release" for s in spends):
        return None
    detail = dict(spends[0].detail)
    columns = tuple(c for c in ("admissions", "discharges", "census") if f"sd-{c}" in detail)
    if not columns:
        return None
    plan = ReleasePlan.from_noise_multiplier(
        spends[0].noise_multiplier,
        delta=ledger.delta,
        max_stay_days=int(detail.get("max-stay-days", 14)),
        columns=columns,
    )
    return {"nights": 2 * plan.max_stay_days, "epsilon": plan.epsilon_for_stay(2 * plan.max_stay_days)}


def _per_stay(ledger: PrivacyLedger) -> dict[str, float] | None:
    """Readmission figures when the node's source release is per stay (daily counts, no patient ids); else None."""
    from medalloc_core.privacy.contribution import group_epsilons

    releases = [s for s in ledger.spends() if s.mechanism == "source-release"]
    if not releases or any(dict(s.detail).get("per-patient") for s in releases):
        return None
    detail = dict(releases[0].detail)
    sd = {c: float(detail[f"sd-{c}"]) for c in ("admissions", "discharges", "census") if f"sd-{c}" in detail}
    if not sd:
        return None
    figures = group_epsilons(sd, ledger.delta, nights=int(detail.get("max-stay-days", 14)))
    return {str(k): v for k, v in figures.items()}


def _release_events(release: Path) -> list[dict[str, Any]]:
    """What happened to the node's data since its first release (``privacy.continuity``): corrections, a file that
    shrank, gaps, per-patient cuts; empty when the release has none or is elsewhere."""
    from medalloc_core.privacy.continuity import read_events

    try:
        return read_events(release)
    except (OSError, ValueError):
        return [{"time": None, "event": "unreadable", "message": f"the events beside {release} cannot be read"}]


def _report(ledger: PrivacyLedger, release: Path | None = None) -> dict[str, Any]:
    entries = ledger.entries()
    spent = ledger.epsilon_spent()
    release = release or ledger.path.with_name(ledger.path.name + ".released.csv")
    return {
        "release_events": _release_events(release),
        "ledger": str(ledger.path),
        "unit": ledger.unit,
        "max_stay_days": ledger.max_stay_days,
        "longer_stay": _longer_stay(ledger) if ledger.unit == "patient" else None,
        "per_stay_readmissions": _per_stay(ledger) if ledger.unit == "patient" else None,
        "accountant": ledger.accountant,
        "delta": ledger.delta,
        "epsilon_budget": ledger.epsilon_budget,
        "epsilon_spent": spent,
        "epsilon_remaining": ledger.remaining(),
        "created": ledger.created,
        "budget_changes": [
            {"timestamp": c.timestamp, "previous": c.previous, "new": c.new} for c in ledger.budget_changes()
        ],
        "entries": [
            {
                "fingerprint": entry.fingerprint,
                "epsilon": entry.epsilon,
                "first_spend": entry.first_spend,
                "last_spend": entry.last_spend,
                "spends": [
                    {
                        "timestamp": s.timestamp,
                        "run_id": s.run_id,
                        "mechanism": s.mechanism,
                        "days": list(s.days) if s.days else None,
                        "noise_multiplier": s.noise_multiplier,
                        "sample_rate": s.sample_rate,
                        "steps": s.steps,
                        "epsilon_entry_after": s.epsilon_entry_after,
                        "epsilon_node_after": s.epsilon_node_after,
                    }
                    for s in entry.spends
                ],
            }
            for entry in entries
        ],
    }


def _short(fingerprint: str) -> str:
    digest = fingerprint.removeprefix("sha256:")
    return digest[:12] if len(digest) > 12 else digest


def _when(timestamp: str | None) -> str:
    return "—" if timestamp is None else timestamp[:16].replace("T", " ")  # minutes, UTC


def _headline(report: dict[str, Any], console: Console) -> None:
    spent, budget, left = report["epsilon_spent"], report["epsilon_budget"], report["epsilon_remaining"]
    style = "red" if left <= 0 else ("yellow" if spent > 0.8 * budget else "green")
    if report["unit"] == "patient":
        n = report["max_stay_days"]
        console.print(
            f"[bold]ε per patient (stays up to {n} nights): [{style}]{spent:.3f}[/{style}][/bold] of budget "
            f"{budget:g}, δ = {report['delta']:g}; [{style}]{left:.3f} left[/{style}]."
        )
        console.print(MEANING.format(n=n, eps=spent, delta=report["delta"]))
        if report.get("per_stay_readmissions"):
            figures = report["per_stay_readmissions"]
            console.print(
                "[bold yellow]This node's release is per STAY[/bold yellow] (its file has daily counts, no patient "
                "ids, so no patient could be bounded). A patient with k stays (a transfer in each, "
                f"{n} nights in all) gets ε: " + ", ".join(f"k={k}: {e:.2f}" for k, e in figures.items()) + "."
            )
        if report["longer_stay"]:
            console.print(
                f"A longer stay is protected less: {report['longer_stay']['nights']} nights → ε "
                f"{report['longer_stay']['epsilon']:.3f} (docs/privacy.md, 'Longer stays')."
            )
    elif report["unit"] == "device":
        console.print(
            f"[bold]ε per device (a device's whole history, equipment task): [{style}]{spent:.3f}[/{style}][/bold] "
            f"of budget {budget:g}, δ = {report['delta']:g}; [{style}]{left:.3f} left[/{style}]. "
            "Whether or not any one device's inventory row and events are in this hospital's logs changes what "
            f"left the node by at most a factor e^{spent:.3f}, except with probability {report['delta']:g} "
            "(docs/privacy.md, 'The equipment task')."
        )
    else:
        console.print(
            f"[bold red]ε per training WINDOW: {spent:.3f}[/bold red] of {budget:g}, δ = {report['delta']:g}. "
            "This ledger predates patient-level accounting: it bounds no patient (a stay enters ~80 windows). Start a "
            "patient-level ledger at a new path and keep this one (docs/hospital.md)."
        )


# Below this many columns the spends table would cut its cells; they are printed as blocks instead.
WIDE_SPENDS = 120


def _print_report(report: dict[str, Any], console: Console) -> None:
    _headline(report, console)
    entries_table = Table(title=f"Privacy ledger {escape(str(report['ledger']))}", title_justify="left")
    for column in ("dataset", "spends", "first spend (UTC)", "last spend (UTC)", "ε dataset"):
        entries_table.add_column(column, justify="right" if column in ("spends", "ε dataset") else "left", no_wrap=True)
    for entry in report["entries"]:
        entries_table.add_row(
            _short(entry["fingerprint"]),
            str(len(entry["spends"])),
            _when(entry["first_spend"]),
            _when(entry["last_spend"]),
            f"{entry['epsilon']:.3f}",
        )
    console.print(entries_table)

    spends_table = Table(title="Spends (σ noise multiplier, q sample rate)", title_justify="left")
    spends_table.add_column("when (UTC)", no_wrap=True)
    spends_table.add_column("run", min_width=4, overflow="fold")
    spends_table.add_column("dataset", no_wrap=True)
    spends_table.add_column("mechanism", no_wrap=True)
    for column in ("σ", "q", "steps", "ε data", "ε node"):
        spends_table.add_column(column, justify="right", no_wrap=True)
    rows = sorted(
        ((s, entry["fingerprint"]) for entry in report["entries"] for s in entry["spends"]),
        key=lambda pair: pair[0]["timestamp"],
    )
    for spend, fingerprint in rows:
        spends_table.add_row(
            _when(spend["timestamp"]),
            escape(str(spend["run_id"])),
            _short(fingerprint)[:8],
            escape(str(spend["mechanism"])),
            f"{spend['noise_multiplier']:.4g}",
            f"{spend['sample_rate']:.4g}",
            str(spend["steps"]),
            f"{spend['epsilon_entry_after']:.3f}",
            f"{spend['epsilon_node_after']:.3f}",
        )
    if not rows:
        console.print("No spends recorded yet.")
    elif console.width >= WIDE_SPENDS:
        console.print(spends_table)
    else:  # a narrow terminal: one short block per spend, every value whole (a table would cut them)
        console.print("[italic]Spends (σ noise multiplier, q sample rate)[/italic]")
        for spend, fingerprint in rows:
            console.print(
                f"{_when(spend['timestamp'])}  run {escape(str(spend['run_id']))}\n"
                f"  dataset {_short(fingerprint)[:8]}  mechanism {escape(str(spend['mechanism']))}\n"
                f"  σ {spend['noise_multiplier']:.4g}  q {spend['sample_rate']:.4g}  steps {spend['steps']}  "
                f"ε data {spend['epsilon_entry_after']:.3f}  ε node {spend['epsilon_node_after']:.3f}",
                highlight=False,
                soft_wrap=True,
            )

    for change in report["budget_changes"]:
        console.print(
            f"[yellow]Budget changed[/yellow] {_when(change['timestamp'])}: "
            f"ε {change['previous']:g} → {change['new']:g}"
        )
    events = report.get("release_events") or []
    if events:
        console.print("[bold]The node's data over time[/bold] (its release; newest last):")
        for event in events[-10:]:
            console.print(f"  {_when(event.get('time'))}  {escape(str(event['message']))}", soft_wrap=True)
    spent, budget, left = report["epsilon_spent"], report["epsilon_budget"], report["epsilon_remaining"]
    unit = {"patient": "per patient", "device": "per device"}.get(report["unit"], "per training window")
    console.print(
        f"[bold]Node total[/bold] (all datasets and mechanisms composed, {report['accountant'].upper()} accountant; "
        f"Gaussian releases exactly): ε {unit} {spent:.3f} of budget {budget:g} at δ={report['delta']:g}; "
        f"{left:.3f} left."
    )


def privacy(
    ledger: Path = typer.Option(..., "--ledger", help="Path of the node's privacy ledger (JSON)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for machines)."),
    upgrade: bool = typer.Option(
        False, "--upgrade", help="Rewrite a version-1 (unkeyed) ledger under a new ledger key, once."
    ),
    release: Path | None = typer.Option(
        None, "--release", help="The node's release-path, when not the default <ledger>.released.csv."
    ),
) -> None:
    """Show a node's privacy ledger: each dataset, each spend, and the budget left."""
    from medalloc_core.privacy.ledger import upgrade_ledger

    try:
        if upgrade:
            key = upgrade_ledger(ledger)
            Console(stderr=True).print(
                f"upgraded {ledger}; its key is {key} (back it up with the ledger)", highlight=False, markup=False
            )
        report = _report(PrivacyLedger.load(ledger), release)
    except LedgerError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report, Console(highlight=False))


def register(app: typer.Typer) -> None:
    """Add the ``privacy`` command to ``app``."""
    app.command(name="privacy")(privacy)
