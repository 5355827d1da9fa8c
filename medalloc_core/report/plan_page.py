"""The planner page: a bed manager's Monday in one self-contained HTML file, readable on a phone.

Its first screen answers one question — how many staffed beds and nurses per unit for each of
the next 14 days, and how likely we are to run out — as one table per group of up to four units
(days down, units across, so a 390-pixel phone shows every unit of a group without scrolling
sideways). One click below (``<details>``): the fan chart of demand against the plan, the
plan's reasons, last week's forecast accountability and the drift alarm's rule; an alarm itself
is shown above the table. The plan is ``medalloc_core.allocation.newsvendor.plan_hospital``'s;
nothing here decides anything, it lays out what the planner and the accountability computed.

Self-contained as the run report is (``medalloc_core.report.html``): inline CSS, charts as
``data:`` PNGs, no script, no font or file from the network. Every name read from the data
(hospital, unit, target, model version) is HTML-escaped.
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from medalloc_core.allocation.explain_plans import hospital_plan_reasons
from medalloc_core.allocation.forecast_io import HOSPITAL
from medalloc_core.allocation.newsvendor import PlanConfig
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import DATE, UNIT
from medalloc_core.forecast.accountability import Accountability
from medalloc_core.report.html import esc

GENERATOR = "medalloc plan-page"
UNITS_PER_TABLE = 4  # units across one table: four fit a 390-pixel phone screen at a readable size

STYLE = """
:root { --ink: #1d2733; --muted: #5b6776; --line: #d9dee5; --band: #f4f6f9; --accent: #1f5fa8;
        --bad: #b3261e; --warn: #fff1d6; --alarm: #fde7e5; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff; overflow-wrap: anywhere;
       font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #16324f; color: #fff; padding: 8px 12px; }
header h1 { margin: 0; font-size: 17px; }
header p { margin: 2px 0 0; color: #cfd8e3; font-size: 12px; }
main { max-width: 980px; margin: 0 auto; padding: 4px 8px 40px; }
.alarm { background: var(--alarm); border-left: 4px solid var(--bad); padding: 6px 8px; margin: 6px 0;
         font-size: 13px; }
.tables { display: flex; flex-wrap: wrap; gap: 0 16px; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; margin: 4px 0; font-size: 14px; }
.tables table { flex: 1 1 340px; max-width: 100%; }
caption { text-align: left; font-size: 12px; color: var(--muted); padding: 2px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 4px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; font-size: 12px; }
table.plan th.day { width: 3.9em; white-space: nowrap; }
table.plan td { text-align: center; font-variant-numeric: tabular-nums; line-height: 1.2; }
table.plan td b { font-size: 15px; }
table.plan td small { display: block; color: var(--muted); font-size: 11px; }
table.plan td.risk small { color: #8a5300; font-weight: 600; }
table.plan td.full { background: var(--warn); }
table.plan td.full small { color: var(--bad); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#accountability-table th:first-child { width: 34%; }
td.bad { color: var(--bad); font-weight: 600; }
p.legend, p.note { color: var(--muted); font-size: 12px; margin: 2px 0 8px; }
details { margin: 8px 0; border-top: 1px solid var(--line); padding-top: 4px; }
summary { font-weight: 600; cursor: pointer; padding: 4px 0; }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
ul.words { padding-left: 18px; }
ul.words li { margin-bottom: 4px; font-size: 14px; }
h2 { font-size: 16px; margin: 16px 0 4px; }
"""


@dataclass(frozen=True)
class PlanPage:
    """Everything the page shows; the page is a function of this and nothing else."""

    hospital: str
    plan: pd.DataFrame  # plan_hospital's frame, one hospital
    config: PlanConfig = PlanConfig()
    accountability: Accountability | None = None
    fan_charts: dict[str, bytes] = field(default_factory=dict)  # unit -> PNG
    origin: date | None = None  # last day of data the forecast was made from
    model_version: str | None = None
    made_on: date | None = None
    notes: Sequence[str] = ()  # plain sentences shown under the table (a missing log, a warning)


def _percent(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    if p < 0.005:
        return "<1 %"
    if p > 0.995:
        return ">99 %"
    return f"{100 * p:.0f} %"


def _day(value: object) -> str:
    stamp = pd.Timestamp(value)
    return f"{stamp:%a} {stamp.day} {stamp:%b}"


def _plan_tables(plan: pd.DataFrame, threshold: float) -> str:
    units = sorted(plan[UNIT].astype(str).unique().tolist())
    days = sorted(pd.to_datetime(plan[DATE]).unique())
    by_key = {(str(r[UNIT]), pd.Timestamp(r[DATE])): r for r in plan.to_dict("records")}
    tables = []
    for g, start in enumerate(range(0, len(units), UNITS_PER_TABLE)):
        group = units[start : start + UNITS_PER_TABLE]
        head = "".join(f'<th scope="col" data-unit="{esc(u)}">{esc(u)}</th>' for u in group)
        rows = []
        for day in days:
            cells = []
            for unit in group:
                r = by_key.get((unit, pd.Timestamp(day)))
                if r is None:
                    cells.append('<td class="missing">–</td>')
                    continue
                p_run_out, p_full = float(r["p_overflow"]), float(r["p_exceed_physical"])
                css = "full" if p_full > threshold else ("risk" if p_run_out >= 0.10 else "")
                full = f" · full {_percent(p_full)}" if p_full > threshold else ""
                cells.append(
                    f'<td class="{css}" data-unit="{esc(unit)}" data-date="{pd.Timestamp(day):%Y-%m-%d}" '
                    f'data-beds="{int(r["staffed_beds"])}" data-nurses="{int(r["nurses_per_shift"])}" '
                    f'data-p-run-out="{p_run_out:.6g}" data-p-full="{p_full:.6g}">'
                    f"<b>{int(r['staffed_beds'])}</b> · {int(r['nurses_per_shift'])}"
                    f"<small>{_percent(p_run_out)}{full}</small></td>"
                )
            stamp = pd.Timestamp(day)
            rows.append(
                f'<tr><th scope="row" class="day" title="{stamp:%Y-%m-%d}">{stamp:%a} {stamp.day}</th>'
                f"{''.join(cells)}</tr>"
            )
        ident = ' id="plan-table"' if g == 0 else f' id="plan-table-{g + 1}"'
        tables.append(
            f'<table class="plan"{ident}><caption>beds · nurses per shift; chance of running out</caption>'
            f'<thead><tr><th class="day" scope="col">day</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        )
    return f'<div class="tables">{"".join(tables)}</div>'


def _fan(page: PlanPage) -> str:
    if not page.fan_charts:
        return '<p class="note">(no fan chart)</p>'
    figures = []
    for unit, png in sorted(page.fan_charts.items()):
        data = base64.b64encode(png).decode("ascii")
        figures.append(
            f'<figure><img alt="fan chart {esc(unit)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(unit)}: census demand P10–P90 (band) and median, staffed beds (steps), physical beds "
            "(dashed)</figcaption></figure>"
        )
    return "".join(figures)


def _reasons(page: PlanPage) -> str:
    items = [f"<li>{esc(line)}</li>" for line in hospital_plan_reasons(page.plan, page.config)]
    per_unit = []
    for unit, g in page.plan.groupby(UNIT, sort=True):
        days = "".join(
            f"<li>{esc(_day(r[DATE]))}: {esc(r['reason'])}; P10–P90 of demand "
            f"{float(r['demand_p10']):.1f}–{float(r['demand_p90']):.1f}</li>"
            for r in g.sort_values(DATE).to_dict("records")
        )
        per_unit.append(f"<details><summary>{esc(unit)}, day by day</summary><ul class='words'>{days}</ul></details>")
    return f'<ul class="words">{"".join(items)}</ul>{"".join(per_unit)}'


def _number(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "–"


def _accountability(acc: Accountability | None) -> str:
    if acc is None:
        return (
            '<p class="note">No forecast log was given (--node-config or --forecast-log): '
            "last week cannot be scored.</p>"
        )
    if acc.week_start is None or not acc.scores:
        when = f" for {acc.week_start} – {acc.week_end}" if acc.week_start else ""
        return (
            f'<p class="note" id="no-accountability">No forecast in the log was made before last week{esc(when)}: '
            "nothing to score yet. Next week's page scores this week's forecast.</p>"
        )
    drift = {(d.unit, d.target): d for d in acc.drift}
    rows = []
    for s in sorted(acc.scores, key=lambda s: (s.unit, s.target)):
        d = drift.get((s.unit, s.target))
        state = d.state if d is not None else "–"
        css = ' class="bad"' if d is not None and d.alarm else ""
        rows.append(
            f'<tr data-unit="{esc(s.unit)}" data-target="{esc(s.target)}" data-wape="{s.wape:.6g}" '
            f'data-pinball="{s.pinball:.6g}" data-coverage="{s.coverage:.6g}" data-state="{esc(state)}">'
            f"<td>{esc(s.unit)} <small>{esc(s.target)}</small></td>"
            f'<td class="num">{_number(100 * s.wape, ".1f")} %</td><td class="num">{_number(s.pinball, ".2f")}</td>'
            f'<td class="num">{s.coverage * s.days:.0f}/{s.days}</td><td{css}>{esc(state)}</td></tr>'
        )
    versions = sorted({s.model_version for s in acc.scores})
    origins = sorted({s.origin for s in acc.scores})
    sentences = "".join(f"<li>{esc(d.sentence())}</li>" for d in acc.drift if d.state != "within")
    rule = acc.rule
    return (
        f'<p class="note">Week {acc.week_start} – {acc.week_end}, scored on the forecast made from data up to '
        f"{', '.join(str(o) for o in origins)} by model {esc(', '.join(versions))}, against the true counts "
        "(local; never sent).</p>"
        '<table id="accountability-table"><thead><tr><th>unit</th><th class="num">WAPE</th>'
        '<th class="num">pinball</th><th class="num">days in P10–P90</th><th>vs usual</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        + (f'<ul class="words">{sentences}</ul>' if sentences else "")
        + '<p class="note">WAPE: the week\'s absolute errors of the median over its true total (0 % is perfect). '
        "Pinball: the average quantile loss over P10/P50/P90, in beds or patients. Days in P10–P90: about 8 in 10 "
        f"should be. Usual range: median ± max(3 × 1.4826 × MAD, {rule.floor:g}) of the same unit's WAPE in up to "
        f"{rule.history_weeks} earlier weeks (needs {rule.min_history}); above it is a drift alarm.</p>"
    )


def build_plan_page(page: PlanPage) -> str:
    """The whole document."""
    plan = page.plan
    threshold = page.config.physical_risk_threshold
    days = sorted(pd.to_datetime(plan[DATE]).unique())
    span = f"{_day(days[0])} – {_day(days[-1])}" if days else "no days"
    facts = [esc(page.hospital), span]
    if page.origin is not None:
        facts.append(f"data to {page.origin}")
    if page.model_version:
        facts.append(f"model {esc(page.model_version)}")
    if page.made_on is not None:
        facts.append(f"made {page.made_on}")
    alarms = page.accountability.alarms if page.accountability is not None else []
    # One short line whatever the number of alarms, so that the table stays on the first screen; the
    # sentences are in the accountability section below.
    alarm = (
        f'<p class="alarm" id="drift-alarm"><b>Drift alarm:</b> last week\'s forecast did worse than usual for '
        f"{esc(', '.join(f'{d.unit} {d.target}' for d in alarms))}. "
        '<a href="#accountability">Last week</a></p>'
        if alarms
        else ""
    )
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in page.notes)
    legend = (
        '<p class="legend"><b>14 · 4</b> = staffed beds · nurses per shift. The % under it: the chance that more '
        "patients need a bed than are staffed. Shaded, with “full”: the chance of more patients than physical beds "
        f"is above {100 * threshold:g} %.</p>"
    )
    sections = [
        f'<section id="plan">{alarm}{_plan_tables(plan, threshold)}{legend}{notes}</section>',
        f'<details id="fan-chart"><summary>Fan chart: demand and the plan</summary>{_fan(page)}</details>',
        f'<details id="reasons"><summary>Why these numbers</summary>{_reasons(page)}</details>',
        f'<section id="accountability"><h2>Last week: forecast against what happened</h2>'
        f"{_accountability(page.accountability)}</section>",
    ]
    title = f"Beds and nurses, next {len(days)} days"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="{GENERATOR}"><link rel="icon" href="data:,">'
        f"<title>{esc(page.hospital)}: {esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{' · '.join(facts)}</p></header>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )


def fan_charts(plan: pd.DataFrame) -> dict[str, bytes]:
    """One PNG per unit of ``plan`` (allocation.plots.plot_plan: demand band, median, staffed and physical beds)."""
    from medalloc_core.allocation.plots import plot_plan

    charts = {}
    with tempfile.TemporaryDirectory(prefix="medalloc-plan-page-") as folder:
        for i, (unit, g) in enumerate(plan.groupby(UNIT, sort=True)):
            path = plot_plan(g, Path(folder) / f"unit-{i}.png")
            charts[str(unit)] = path.read_bytes()
    return charts


def write_plan_page(page: PlanPage, out: Path, *, force: bool = False) -> Path:
    """Write the page to ``out`` atomically; a file there that is not an earlier plan page needs ``force``."""
    out = Path(out)
    if out.exists() and not force:
        head = out.read_bytes()[:2048] if out.is_file() else b""
        if f'content="{GENERATOR}"'.encode() not in head:
            raise FileExistsError(
                f"{out} exists and is not a MedAlloc plan page; pass --force to replace it or choose another --out"
            )
    if plan_hospitals(page.plan) not in ([], [page.hospital]):
        raise ValueError(f"the plan holds hospitals {plan_hospitals(page.plan)}, the page is for {page.hospital!r}")
    atomic_write_bytes(out, build_plan_page(page).encode("utf-8"))
    return out


def plan_hospitals(plan: pd.DataFrame) -> list[str]:
    return sorted(plan[HOSPITAL].astype(str).unique().tolist())
