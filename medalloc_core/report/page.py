"""One page per run: a simulation's results folder as a single self-contained HTML file.

``build_report(results)`` reads what a run left in its folder — ``scenario.toml``,
``summary.json``, ``metrics.jsonl``, the PNG plots and, when present, the allocation plan in
``allocation/`` — and lays it out for a planner: the scenario, the accuracy comparison, the
privacy each node spent, the round curves, refusals and dropped replies, forecast fan charts
and the plan with its reasons. It only reads; a missing part is said to be missing, never
invented. ``summary.json`` is read generically: every per-hospital number it holds under a
privacy-like name (epsilon, delta, budget, patient, privacy) becomes a column, so fields other
branches add show up without a change here.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tomllib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.paths import read_regular_bytes
from medalloc_core.report.html import cell, esc, image, number, page, table

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
RUN_SUMMARY_FILE = "run-summary.json"  # written by the ServerApp of a real run (server/app.py)
SCENARIO_FILE = "scenario.toml"
METRICS_FILE = "metrics.jsonl"
ALLOCATION_DIR = "allocation"
# The accuracy columns of the comparison table: summary key -> (heading, decimals).
METRICS: dict[str, tuple[str, int]] = {
    "mae": ("MAE", 2),
    "rmse": ("RMSE", 2),
    "wape": ("WAPE", 3),
    "pinball": ("pinball", 2),
    "coverage": ("P10–P90 coverage", 2),
    "width": ("P10–P90 width", 1),
}
_PRIVACY_WORDS = ("epsilon", "delta", "budget", "patient", "privacy", "ledger")


class ReportError(ValueError):
    """The folder is not a results folder the report can read; the message says what is missing or broken."""


# ------------------------------------------------------------------ reading
def _read_summary(results: Path) -> dict[str, Any]:
    path = results / SUMMARY_FILE
    if not path.is_file():
        path = results / RUN_SUMMARY_FILE  # a real run's folder: the ServerApp writes this one
    if not path.is_file():
        raise ReportError(
            f"{results} holds neither {SUMMARY_FILE} nor {RUN_SUMMARY_FILE}: not the results folder of "
            "`medalloc simulate` or of a federation run (the ServerApp's out-dir)"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from exc
    except RecursionError:
        raise ReportError(f"{path}: not readable JSON (nested too deeply)") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return summary


def _read_rounds(results: Path) -> list[dict[str, Any]]:
    path = results / METRICS_FILE
    if not path.is_file():
        return []
    rounds = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            logger.warning("%s, line %d: not JSON, left out of the report", path, i)
            continue
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            rounds.append(record)
    return rounds


_MAX_TABLE_BYTES = 64 * 2**20  # a results table (a plan, costs) is a few KiB


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(io.BytesIO(read_regular_bytes(path, limit=_MAX_TABLE_BYTES)))
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, value
    if isinstance(value, Mapping) and len(path) < 4:
        for key, child in value.items():
            yield from _walk(child, (*path, str(key)))


def _at(value: Any, *keys: str, default: Any = None) -> Any:
    """``value[k1][k2]...`` through mappings only; ``default`` when a step is missing or not a mapping.

    summary.json is read, not trusted: a field of an unexpected type shows as missing, never as a crash.
    """
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return default
        value = value[key]
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _hospitals(summary: Mapping[str, Any]) -> list[str]:
    listed = summary.get("hospitals")
    return [str(h) for h in listed] if isinstance(listed, list) else []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def per_hospital_privacy(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ``{hospital: number}`` map in the summary whose path names privacy (epsilon, delta, patient ...).

    Returns ``{"federation.epsilon_per_hospital": {"H000": 2.1, ...}, ...}``; maps under
    ``methods`` (accuracy) are left out.
    """
    hospitals = set(_hospitals(summary))
    found: dict[str, dict[str, Any]] = {}
    for path, value in _walk(summary):
        if not path or path[0] == "methods" or not isinstance(value, Mapping) or not value:
            continue
        label = ".".join(path)
        if not any(word in label.lower() for word in _PRIVACY_WORDS):
            continue
        keys = {str(k) for k in value}
        if hospitals and keys <= hospitals and all(_is_number(v) or v is None for v in value.values()):
            found[label] = {str(k): v for k, v in value.items()}
    return found


def privacy_scalars(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Single privacy numbers and words (budget, delta, accountant ...) anywhere in the summary but ``methods``
    and the per-hospital maps (those are the columns of :func:`per_hospital_privacy`)."""
    maps = set(per_hospital_privacy(summary))
    out: dict[str, Any] = {}
    for path, value in _walk(summary):
        if not path or path[0] == "methods" or isinstance(value, Mapping | list):
            continue
        if ".".join(path[:-1]) in maps or "last_round" in path or path[-1] == "meaning":
            continue  # the maps are columns, the last round is in the round table, the meaning is its own line
        label = ".".join(path)
        if any(word in label.lower() for word in _PRIVACY_WORDS):
            out[label] = value
    return out


# ------------------------------------------------------------------ sections
def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def _scenario_section(results: Path, summary: Mapping[str, Any]) -> str:
    path = results / SCENARIO_FILE
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    try:
        parsed = tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError as exc:
        parsed = {}
        logger.warning("%s: not valid TOML (%s)", path, exc)
    fed = _mapping(summary.get("federation"))
    hospitals = _hospitals(summary)
    body = (
        f"<p>Scenario <b>{esc(summary.get('scenario', '?'))}</b> ({esc(summary.get('source', 'unknown source'))}): "
        f"{len(hospitals)} hospitals ({esc(', '.join(hospitals))}), "
        f"{esc(fed.get('rounds', '?'))} rounds of {esc(fed.get('strategy', '?'))} with "
        f"{esc(fed.get('local_epochs', '?'))} local epochs per round.</p>"
    )
    rows = _flatten(parsed)
    if rows:
        body += table(["setting", "value"], [[esc(k), esc(v)] for k, v in rows], table_id="scenario-table")
        body += f"<details><summary>scenario.toml as run</summary><pre>{esc(text)}</pre></details>"
    elif not text:
        body += f'<p class="note">No {SCENARIO_FILE} in the results folder.</p>'
    return _section("scenario", "Scenario", body)


def _comparison_section(results: Path, summary: Mapping[str, Any]) -> str:
    methods = _mapping(summary.get("methods"))
    if not methods:
        return _section("comparison", "Accuracy", '<p class="note">summary.json holds no method results.</p>')
    wapes = {m: _at(r, "overall", "volume_weighted", "wape") for m, r in methods.items()}
    finite = {m: w for m, w in wapes.items() if _is_number(w) and math.isfinite(w)}
    best = min(finite, key=lambda m: finite[m]) if finite else None
    rows, classes = [], []
    for method, result in methods.items():
        overall = _mapping(_at(result, "overall", "volume_weighted"))
        row = [cell(str(method), numeric=False, data={"method": method})]
        for key, (_, digits) in METRICS.items():
            value = overall.get(key)
            data = {"method": method, "metric": key, "value": repr(value) if _is_number(value) else ""}
            row.append(cell(number(value, digits), data=data))
        rows.append(row)
        classes.append("best" if method == best else "")
    headers = ["method", *(h for h, _ in METRICS.values())]
    body = (
        "<p>Test-period accuracy on every hospital's same held-out windows, volume-weighted over hospitals "
        "(patients and occupied beds). Lower MAE, RMSE, WAPE and pinball are better; a good P10–P90 band "
        f"covers about 80 % of the actual values. Bold: the lowest WAPE{f' ({esc(best)})' if best else ''}.</p>"
    )
    body += table(headers, rows, numeric=[False] + [True] * len(METRICS), table_id="comparison", row_classes=classes)
    per_rows = []
    hospitals = _hospitals(summary)
    for method, result in methods.items():
        per = _mapping(_at(result, "per_hospital"))
        per_rows.append([esc(method), *(esc(number(_at(per, h, "wape"), 3)) for h in hospitals)])
    body += (
        "<details><summary>WAPE per hospital</summary>"
        + table(["method", *hospitals], per_rows, numeric=[False] + [True] * len(hospitals))
        + "</details>"
    )
    body += image(
        results / "plots" / "comparison_wape.png", "test WAPE per hospital", "Test WAPE per hospital and method."
    )
    return _section("comparison", "Accuracy: the federation against its alternatives", body)


def _heading(label: str) -> str:
    """'federation.epsilon_per_hospital' -> 'epsilon per hospital (federation)'."""
    *parents, last = label.split(".")
    words = last.replace("_", " ").replace("-", " ")
    return f"{words} ({', '.join(parents)})" if parents else words


def _privacy_section(summary: Mapping[str, Any]) -> str:
    columns = per_hospital_privacy(summary)
    scalars = privacy_scalars(summary)
    hospitals = _hospitals(summary)
    body = (
        "<p>What each node spent of its own privacy budget, as its ledger records it (every number below "
        "comes from summary.json as written by the run).</p>"
    )
    meaning = _at(summary, "privacy", "meaning")
    if isinstance(meaning, str) and meaning:
        body += f'<p id="privacy-meaning"><b>What the guarantee means:</b> {esc(meaning)}</p>'
    if columns:
        headers = ["hospital", *(_heading(label) for label in columns)]
        rows = []
        for h in hospitals:
            row = [cell(h, numeric=False)]
            for label, values in columns.items():
                value = values.get(h)
                row.append(cell(number(value, 3), data={"field": label, "hospital": h, "value": repr(value)}))
            rows.append(row)
        body += table(headers, rows, numeric=[False] + [True] * len(columns), table_id="privacy")
    else:
        body += '<p class="note">summary.json reports no per-node privacy spend.</p>'
    if scalars:
        shown = [[esc(k), esc(f"{v:.4g}" if isinstance(v, float) else v)] for k, v in scalars.items()]
        body += table(["setting", "value"], shown, table_id="privacy-settings")
    return _section("privacy", "Privacy spent per node", body)


def _rounds_section(results: Path, rounds: list[dict[str, Any]]) -> str:
    body = image(
        results / "plots" / "metrics_per_round.png",
        "metrics per round",
        "Test MAE and WAPE of the global model and the training loss, round by round (round 0: the initial model).",
    )
    if rounds:
        rows = []
        for r in rounds:
            nodes = _mapping(r.get("nodes"))
            train, evaluate = _mapping(r.get("train")), _mapping(r.get("evaluate"))
            rows.append(
                [
                    esc(r["round"]),
                    esc(number(r.get("seconds"), 1)),
                    *(
                        esc(nodes.get(k, 0) if r["round"] else "–")
                        for k in ("sampled", "accepted", "dropped", "refused", "failed")
                    ),
                    esc(number(train.get("train-loss"), 3)),
                    esc(number(evaluate.get("eval-mae"), 2)),
                    esc(number(evaluate.get("eval-wape"), 3)),
                    esc(number(r.get("epsilon-max"), 2)),
                ]
            )
        headers = [
            "round",
            "seconds",
            "sampled",
            "accepted",
            "dropped",
            "refused",
            "failed",
            "train loss",
            "test MAE",
            "test WAPE",
            "ε max",
        ]
        body += table(headers, rows, numeric=[True] * len(headers), table_id="rounds")
    else:
        body += f'<p class="note">No {METRICS_FILE} in the results folder.</p>'
    return _section("rounds", "Round by round", body)


def _participation_section(summary: Mapping[str, Any]) -> str:
    """A real run's participation: rounds each node's reply was aggregated in, and the model kept."""
    fed = _mapping(summary.get("federation"))
    accepted = _mapping(fed.get("rounds_accepted"))
    if not accepted:
        return ""
    total = fed.get("rounds", "?")
    rows = [
        [cell(str(h), numeric=False), cell(str(n), data={"field": "rounds_accepted", "hospital": str(h), "value": n})]
        for h, n in accepted.items()
    ]
    body = f"<p>Rounds in which each node's reply was aggregated, of {esc(total)}.</p>"
    body += table(["hospital", "rounds aggregated"], rows, numeric=[False, True], table_id="participation")
    kept = _mapping(fed.get("model_kept"))
    if kept:
        body += (
            f'<p id="model-kept">The model kept ({esc(kept.get("file", ""))}) is round '
            f"<b>{esc(kept.get('round', '?'))}</b>'s: {esc(kept.get('selected_by', ''))}.</p>"
        )
    refusals = _mapping(fed.get("refusals"))
    if refusals:
        body += (
            "<p>Why replies were not aggregated: " + esc(", ".join(f"{k} ×{v}" for k, v in refusals.items())) + "</p>"
        )
    return _section("participation", "Participation", body)


def _refusals_section(rounds: list[dict[str, Any]]) -> str:
    rows = []
    for r in rounds:
        outcomes = r.get("outcomes")
        for outcome in outcomes if isinstance(outcomes, list) else []:
            if not isinstance(outcome, Mapping) or outcome.get("status") == "accepted":
                continue
            rows.append(
                [
                    esc(r["round"]),
                    esc(outcome.get("node", "?")),
                    esc(outcome.get("hospital", "–")),
                    cell(str(outcome.get("status", "?")), numeric=False, css="bad"),
                    esc(outcome.get("reason", "")),
                ]
            )
    if rows:
        body = (
            f"<p>{len(rows)} node replies were not aggregated. A refusal is a node declining on its own terms "
            "(e.g. its privacy budget); a dropped reply failed the coordinator's checks; a failure is an error "
            "or a node that did not answer.</p>"
        )
        body += table(
            ["round", "node", "hospital", "status", "reason"],
            rows,
            numeric=[True, False, False, False, False],
            table_id="refusals",
        )
    else:
        body = '<p id="refusals-none">None: every sampled node\'s reply was accepted in every round.</p>'
    return _section("refusals", "Refusals and dropped replies", body)


def _forecast_section(results: Path) -> str:
    plots = sorted((results / "plots").glob("forecast_*.png")) if (results / "plots").is_dir() else []
    body = (
        "<p>For a few hospitals, the busiest unit's test period: actual values, the federated model's "
        "back-to-back forecasts (median) and the P10–P90 band.</p>"
    )
    body += "".join(
        image(p, f"forecast {p.stem.removeprefix('forecast_')}", p.stem.removeprefix("forecast_")) for p in plots
    )
    if not plots:
        body += '<p class="note">No forecast plots in the results folder.</p>'
    return _section("forecasts", "Forecast fan charts", body)


def _plan_table(plan: pd.DataFrame) -> str:
    rows = []
    for (hospital, unit), g in plan.groupby(["hospital", "unit"], sort=True):
        flagged = int(g["flag_physical"].astype(str).str.lower().eq("true").sum()) if "flag_physical" in g else 0
        staffed = f"{int(g['staffed_beds'].min())}–{int(g['staffed_beds'].max())}"
        rows.append(
            [
                esc(hospital),
                esc(unit),
                esc(number(float(g["demand_p50"].mean()), 1)),
                esc(staffed),
                esc(int(g["physical_beds"].max())),
                esc(f"{100 * float(g['p_overflow'].mean()):.1f} %"),
                cell(str(flagged), css="bad" if flagged else ""),
            ]
        )
    headers = ["hospital", "unit", "median demand", "staffed beds", "physical beds", "P(overflow)", "days at risk"]
    return table(headers, rows, numeric=[False, False, True, True, True, True, True], table_id="plan")


def _allocation_section(results: Path) -> str:
    folder = results / ALLOCATION_DIR
    if not folder.is_dir():
        return _section(
            "allocation",
            "Allocation plan",
            '<p class="note">No allocation plan in this results folder (`medalloc simulate` writes one in '
            "allocation/; or run `medalloc allocate` / `allocate-region`).</p>",
        )
    body = ""
    settings = folder / "settings.json"
    if settings.is_file():
        try:
            body += f"<p>{esc(_at(json.loads(settings.read_text(encoding='utf-8')), 'description', default=''))}</p>"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    plan = _read_csv(folder / "plan.csv")
    if plan is not None and {"hospital", "unit", "staffed_beds", "demand_p50"} <= set(plan.columns):
        body += "<h3>Each hospital's bed plan (newsvendor)</h3>" + _plan_table(plan)
    reasons = folder / "plan_explanation.txt"
    if reasons.is_file():
        lines = [ln for ln in reasons.read_text(encoding="utf-8").split("\n\n") if ln.strip()]
        body += '<details><summary>Why these beds (critical ratio and quantile per unit)</summary><ul class="words">'
        body += "".join(f"<li>{esc(ln.strip())}</li>" for ln in lines) + "</ul></details>"
    for png in sorted(folder.glob("plan_*.png")):
        body += image(png, f"bed plan {png.stem.removeprefix('plan_')}", f"Bed plan, {png.stem.removeprefix('plan_')}.")
    regional = folder / "regional"
    costs = _read_csv(regional / "costs.csv")
    if costs is not None and not costs.empty:
        body += "<h3>The regional surge and transfer plan</h3>"
        row = costs.iloc[0]
        body += table(
            ["cost part", "expected cost"],
            [[esc(p), esc(number(float(row[p]), 1))] for p in ("surge", "unserved", "transfer", "total") if p in row],
            numeric=[False, True],
            table_id="regional-costs",
        )
        text = regional / "explanation.txt"
        if text.is_file():
            lines = [ln for ln in text.read_text(encoding="utf-8").split("\n\n") if ln.strip()]
            body += '<ul class="words">' + "".join(f"<li>{esc(ln.strip())}</li>" for ln in lines[1:8]) + "</ul>"
        binding = _read_csv(regional / "binding_constraints.csv")
        if binding is not None and not binding.empty:
            rows = [
                [
                    esc(r["constraint"]),
                    esc(r["where"]),
                    esc(r["date"]),
                    esc(number(float(r["limit"]), 0)),
                    esc(number(float(r["used"]), 1)),
                    esc(number(float(r["shadow_price"]), 2)),
                ]
                for _, r in binding.head(10).iterrows()
            ]
            body += "<p>Binding constraints with the largest shadow prices — what one more unit would save:</p>"
            body += table(
                ["constraint", "where", "date", "limit", "used", "saves per +1"],
                rows,
                numeric=[False, False, False, True, True, True],
                table_id="binding",
            )
        body += image(
            regional / "regional.png",
            "regional plan",
            "Per hospital: surge bed-days received, expected unserved, net transfers in.",
        )
    return _section("allocation", "Allocation plan", body)


def _files_section(results: Path, summary: Mapping[str, Any]) -> str:
    timing = _mapping(summary.get("timing_seconds"))
    body = ""
    if isinstance(timing, Mapping) and timing:
        body += table(
            ["phase", "seconds"], [[esc(k), esc(number(v, 1))] for k, v in timing.items()], numeric=[False, True]
        )
    files = summary.get("files", [])
    if isinstance(files, list) and files:
        body += (
            "<details><summary>Files in the results folder</summary><ul>"
            + "".join(f"<li>{esc(f)}</li>" for f in files)
            + "</ul></details>"
        )
    return _section("files", "Timings and files", body)


def _cards(summary: Mapping[str, Any], rounds: list[dict[str, Any]]) -> str:
    fed = _mapping(summary.get("federation"))
    wape = _at(summary, "methods", "federated", "overall", "volume_weighted", "wape")
    eps = [v for v in _mapping(fed.get("epsilon_per_hospital")).values() if _is_number(v)]
    unit = f" per {_at(summary, 'privacy', 'unit')}" if isinstance(_at(summary, "privacy", "unit"), str) else ""
    not_accepted = 0
    for r in rounds:
        outcomes = r.get("outcomes")
        for o in outcomes if isinstance(outcomes, list) else []:
            not_accepted += int(isinstance(o, Mapping) and o.get("status") != "accepted")
    kept = _mapping(fed.get("model_kept"))
    cards = [
        (str(len(_hospitals(summary))), "hospitals"),
        (str(fed.get("rounds", "–")), f"rounds of {fed.get('strategy', '?')}"),
        (number(wape, 3), "federated test WAPE"),
        (number(max(eps), 2) if eps else "–", f"largest ε{unit} spent by a node"),
        (str(not_accepted), "replies not aggregated"),
    ]
    if _is_number(kept.get("round")):
        cards.append(
            (
                f"round {kept['round']}",
                "model kept (best on released validation data)"
                if "validation" in str(kept.get("selected_by", ""))
                else "model kept (the last round)",
            )
        )
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in cards)
        + "</div>"
    )


def _safely(section: Callable[[Path], str], results: Path) -> str:
    """A section built from CSV files another tool wrote: an unreadable value shows as a note, not a crash."""
    try:
        return section(results)
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("%s: left out of the report (%s)", section.__name__, exc)
        return _section(
            "allocation", "Allocation plan", f'<p class="note">The plan files could not be read: {esc(exc)}</p>'
        )


# ------------------------------------------------------------------ the page
NAV = (
    ("scenario", "Scenario"),
    ("comparison", "Accuracy"),
    ("privacy", "Privacy"),
    ("rounds", "Rounds"),
    ("participation", "Participation"),
    ("refusals", "Refusals"),
    ("forecasts", "Forecasts"),
    ("allocation", "Allocation"),
    ("files", "Files"),
)


def build_report(results: Path) -> str:
    """The HTML page for the results folder ``results`` (raises ``ReportError`` when it is not one)."""
    results = Path(results)
    if not results.is_dir():
        raise ReportError(f"{results} is not a folder; pass the results folder of `medalloc simulate`")
    summary = _read_summary(results)
    rounds = _read_rounds(results)
    sections = [
        _cards(summary, rounds),
        _scenario_section(results, summary),
        _comparison_section(results, summary),
        _privacy_section(summary),
        _rounds_section(results, rounds),
        _participation_section(summary),
        _refusals_section(rounds),
        _forecast_section(results),
        _safely(_allocation_section, results),
        _files_section(results, summary),
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{results.resolve().name} · {len(_hospitals(summary))} hospitals · report made {stamp}"
    nav = [(anchor, label) for anchor, label in NAV if any(f'id="{anchor}"' in s for s in sections)]
    return page(f"MedAlloc run: {summary.get('scenario', results.name)}", subtitle, nav, sections)


def write_report(results: Path, out: Path | None = None, *, force: bool = False) -> Path:
    """Write the page to ``out`` (default ``<results>/report.html``) atomically and return its path.

    A file at ``out`` that is not an earlier MedAlloc report is replaced only with ``force``.
    """
    results = Path(results)
    out = Path(out) if out is not None else results / REPORT_FILE
    if out.exists() and not force:
        head = out.read_bytes()[:2048] if out.is_file() else b""
        if b'content="medalloc report"' not in head:
            raise ReportError(
                f"{out} exists and is not a MedAlloc report; pass --force to replace it or choose another --out"
            )
    text = build_report(results)
    atomic_write_bytes(out, text.encode("utf-8"))
    return out
