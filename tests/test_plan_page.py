"""`medalloc plan-page`: the bed manager's Monday page, from weeks of logged forecasts to a phone screen.

A generated hospital runs six weekly cycles (its data grows by a week, `medalloc forecast
--node-config` logs each forecast), then `medalloc plan-page` writes the page. The fast tests
read the HTML back against the plan computed independently from the same forecast.csv; the
browser tests load it in headless Chromium at a phone's width (390 px) and check what a bed
manager relies on: every unit's 14 days of beds and nurses and the run-out chance on the first
screen, nothing wider than the screen, the fan chart one click below, nothing from the network.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.allocation.forecast_io import capacity_from_records, read_forecast
from medalloc_core.allocation.newsvendor import plan_hospital
from medalloc_core.forecast.accountability import account
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.history import ForecastRun, log_path_for_ledger, read_log
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.model_io import save_model
from medalloc_core.report.plan_page import PlanPage, build_plan_page
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from medalloc_core.validation import load_unit_records
from tests.allocation_fixtures import forecast_frame
from tests.browser import Chromium, chromium_binary

runner = CliRunner()
HOSTILE = '<img src=x onerror="alert(1)">'
WEEKS = 6
PHONE = (390, 844)  # CSS pixels of a common phone screen


@pytest.fixture(scope="module")
def monday(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six weekly cycles of a node: each week the data grows by seven days and the forecast is logged;
    then this Monday's forecast and page."""
    folder = tmp_path_factory.mktemp("monday")
    config = RegionConfig(
        hospitals=1,
        days=160,
        seed=5,
        min_beds=160,
        max_beds=220,
        short_history_fraction=0.0,
        noisy_fraction=0.0,
        specialty_centres=0,
        warmup_days=30,
    )
    full = next(p for p in write_region(generate_region(config), folder / "source") if p.suffix == ".csv")
    spec = WindowSpec(history=14, horizon=14, val_periods=14, test_periods=14)
    dataset = prepare_hospital(load_unit_records(full), spec)
    model = build_model(
        ForecasterConfig(history=14, horizon=14, n_features=dataset.n_features, n_targets=2, hidden=16), seed=0
    )
    train_local(model, dataset.train, config=TrainConfig(epochs=3, batch_size=32, lr=0.01))
    model_path = save_model(folder / "final_model.safetensors", model, spec=dataset.spec)
    ledger = folder / "node" / "privacy-ledger.json"
    toml = folder / "node.toml"
    toml.write_text(
        f'hospital-id = "H000"\ndata-path = "{full}"\nledger-path = "{ledger}"\n'
        "privacy-epsilon-budget = 1.5\nprivacy-delta = 1e-6\nmax-stay-days = 14\n",
        encoding="utf-8",
    )
    records = pd.read_csv(full, parse_dates=["date"])
    last = records["date"].max()
    for week in range(WEEKS, -1, -1):  # six past Mondays, then this one (week 0: all the data)
        data = folder / f"daily-w{week}.csv"
        records[records["date"] <= last - timedelta(days=7 * week)].to_csv(data, index=False, date_format="%Y-%m-%d")
        out = folder / f"week-{week}"
        args = ["forecast", "--model", str(model_path), "--data", str(data), "--node-config", str(toml)]
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
    page = folder / "week-0" / "plan.html"
    result = runner.invoke(
        app,
        [
            "plan-page",
            "--forecast",
            str(folder / "week-0" / "forecast.csv"),
            "--data",
            str(full),
            "--node-config",
            str(toml),
            "--out",
            str(page),
        ],
    )
    assert result.exit_code == 0, result.output
    return {
        "page": page,
        "forecast": folder / "week-0" / "forecast.csv",
        "data": full,
        "ledger": ledger,
        "model": model_path,
    }


def expected_plan(monday: dict[str, Path]) -> pd.DataFrame:
    """The plan, computed here from the same files with the library's defaults, not read from the page."""
    return plan_hospital(read_forecast(monday["forecast"]), capacity_from_records(monday["data"]))


def cells(html: str) -> list[dict[str, str]]:
    pattern = re.compile(
        r'<td class="[^"]*" data-unit="([^"]*)" data-date="([^"]*)" data-beds="(\d+)" data-nurses="(\d+)" '
        r'data-p-run-out="([^"]*)" data-p-full="([^"]*)"><b>(\d+)</b> · (\d+)<small>([^<]*)</small>'
    )
    keys = ("unit", "date", "beds", "nurses", "p_run_out", "p_full", "beds_text", "nurses_text", "risk_text")
    return [dict(zip(keys, m.groups(), strict=True)) for m in pattern.finditer(html)]


# ------------------------------------------------------------------ the page's content
def test_the_page_shows_the_plans_beds_nurses_and_run_out_chance(monday: dict[str, Path]) -> None:
    html = monday["page"].read_text()
    plan = expected_plan(monday)
    seen = cells(html)
    assert len(plan) == plan["unit"].nunique() * 14 and len(seen) == len(plan)
    assert plan["unit"].nunique() == 4
    by_key = {(r["unit"], pd.Timestamp(r["date"]).strftime("%Y-%m-%d")): r for r in plan.to_dict("records")}
    for c in seen:
        row = by_key[(c["unit"], c["date"])]
        assert int(c["beds"]) == int(c["beds_text"]) == row["staffed_beds"]
        assert int(c["nurses"]) == int(c["nurses_text"]) == row["nurses_per_shift"]
        assert float(c["p_run_out"]) == pytest.approx(row["p_overflow"], rel=1e-5, abs=1e-9)
        shown = c["risk_text"].split(" · ")[0]
        if row["p_overflow"] >= 0.005:
            assert shown == f"{100 * row['p_overflow']:.0f} %"
        else:
            assert shown == "<1 %"


def test_the_page_is_self_contained_and_one_click_holds_the_details(monday: dict[str, Path]) -> None:
    html = monday["page"].read_text()
    assert html.startswith("<!DOCTYPE html>") and '<meta name="viewport"' in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)  # a fan chart per unit
    fan = html[html.index('<details id="fan-chart">') :]
    assert fan.index("<img") < fan.index("</details>")  # the charts are behind the click
    reasons = html[html.index('<details id="reasons">') :]
    assert "critical ratio" in reasons[: reasons.index("</details>")]


def test_last_weeks_accountability_is_on_the_page(monday: dict[str, Path]) -> None:
    html = monday["page"].read_text()
    runs = read_log(log_path_for_ledger(monday["ledger"]))
    assert len(runs) >= WEEKS + 1
    acc = account(runs, load_unit_records(monday["data"]).frame)
    assert acc.scores  # last week was scored on the forecast made a week ago
    assert {s.origin for s in acc.scores} == {runs[-2].origin}
    section = html[html.index('id="accountability"') :]
    for s in acc.scores:
        row = re.search(rf'<tr data-unit="{re.escape(s.unit)}" data-target="{s.target}" data-wape="([^"]*)"', section)
        assert row is not None and float(row.group(1)) == pytest.approx(s.wape, rel=1e-5)
    states = {d.state for d in acc.drift}
    assert states <= {"within", "better", "alarm"}  # five earlier weeks: the alarm has its history
    assert ("Drift alarm" in html) == any(d.alarm for d in acc.drift)
    if "Drift alarm" in html:  # above the table, on the first screen
        assert html.index('id="drift-alarm"') < html.index('id="plan-table"')
    assert runs[-2].model_version in section


def test_days_that_may_exceed_the_physical_beds_are_marked_full() -> None:
    days = [(8, 10, 14)] * 5 + [(10, 13, 19)] * 9  # the last nine days may need more than 16 beds
    plan = plan_hospital(forecast_frame({("H000", "ward"): days}), pd.DataFrame({"unit": ["ward"], "beds": [16]}))
    html = build_plan_page(PlanPage(hospital="H000", plan=plan))
    full = re.findall(r'<td class="full" data-unit="ward" data-date="([^"]*)"', html)
    flagged = plan.loc[plan["flag_physical"], "date"].dt.strftime("%Y-%m-%d").tolist()
    assert full == flagged and len(flagged) == 9
    assert html.count(" · full ") == 9


def test_every_name_on_the_page_is_escaped(tmp_path: Path) -> None:
    forecast = forecast_frame({(HOSTILE, HOSTILE): [(8, 10, 14)] * 14, (HOSTILE, "ICU"): [(3, 4, 6)] * 14})
    capacity = pd.DataFrame({"unit": [HOSTILE, "ICU"], "beds": [20, 8]})
    plan = plan_hospital(forecast, capacity)
    # last week's accountability for the same hostile unit, with an alarm: the names go into the table, the
    # banner and the sentences
    last = pd.Timestamp("2026-03-01").date()  # the forecast frame starts the day after
    base = ForecastRun.from_frame(forecast, origin=last, model_version=HOSTILE)
    runs = []
    for k in range(6, -1, -1):  # the forecast made before each of the last seven weeks; the last one tripled
        shift = timedelta(days=7 * (k + 1))
        dates = tuple(d - shift for d in base.dates)
        values = base.values * (3.0 if k == 0 else 1.0)
        runs.append(replace(base, origin=base.origin - shift, dates=dates, values=values))
    actuals = pd.DataFrame(
        [
            {"date": pd.Timestamp(last) - pd.Timedelta(days=d), "unit": u, "census": 10 if u == HOSTILE else 4}
            for d in range(60)
            for u in (HOSTILE, "ICU")
        ]
    )
    acc = account(runs, actuals)
    assert acc.alarms and {d.unit for d in acc.alarms} == {HOSTILE, "ICU"}
    html = build_plan_page(PlanPage(hospital=HOSTILE, plan=plan, fan_charts={HOSTILE: b"\x89PNG"}, accountability=acc))
    assert 'id="drift-alarm"' in html and 'data-state="alarm"' in html
    escaped = "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"
    banner = html[html.index('id="drift-alarm"') : html.index('id="plan-table"')]
    assert escaped in banner and f'<tr data-unit="{escaped}"' in html[html.index('id="accountability-table"') :]
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "<img src=x" not in html


def test_bad_input_is_one_line_and_exit_2(monday: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "plan-page",
            "--forecast",
            str(tmp_path / "none.csv"),
            "--data",
            str(monday["data"]),
            "--out",
            str(tmp_path / "p.html"),
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    other = tmp_path / "notes.html"
    other.write_text("<p>my notes</p>")
    result = runner.invoke(
        app, ["plan-page", "--forecast", str(monday["forecast"]), "--data", str(monday["data"]), "--out", str(other)]
    )
    assert result.exit_code == 2 and "not a MedAlloc plan page" in " ".join(result.output.split())
    assert other.read_text() == "<p>my notes</p>"


# ------------------------------------------------------------------ in a real browser, at a phone's width
needs_chromium = pytest.mark.skipif(
    chromium_binary() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (make test installs it as root: apt-get install chromium)",
)

LAYOUT = """(() => {
  const w = window.innerWidth, h = window.innerHeight;
  const wide = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && (r.right > w + 0.5 || r.left < -0.5);
  }).map(e => e.tagName + '#' + e.id + '.' + e.className);
  const table = document.getElementById('plan-table').getBoundingClientRect();
  const cells = [...document.querySelectorAll('#plan-table td[data-unit]')].map(td => {
    const r = td.getBoundingClientRect();
    return {unit: td.dataset.unit, date: td.dataset.date, beds: td.dataset.beds, nurses: td.dataset.nurses,
            risk: td.dataset.pRunOut, text: td.innerText, inView: r.top >= 0 && r.bottom <= h && r.right <= w};
  });
  const heads = [...document.querySelectorAll('#plan-table thead th[data-unit]')].map(th => th.innerText);
  return {w, h, scrollWidth: document.documentElement.scrollWidth, wide, cells, heads,
          tableTop: table.top, tableBottom: table.bottom,
          fanShown: [...document.querySelectorAll('#fan-chart img')].some(i => i.checkVisibility())};
})()"""


def phone_view(page: Path) -> dict:  # type: ignore[type-arg]
    """Load ``page`` in Chromium emulating a 390 x 844 phone; the layout facts, then the fan chart opened."""
    binary = chromium_binary()
    assert binary is not None
    with Chromium(binary, width=PHONE[0], height=PHONE[1]) as browser:
        tab = browser.open("about:blank")
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 3, "mobile": True},
            session=tab.session,
        )
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=tab.session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == tab.session)
        seen = tab.evaluate(LAYOUT)
        tab.evaluate("document.querySelector('#fan-chart summary').click()")
        opened = tab.evaluate(
            "[...document.querySelectorAll('#fan-chart img')].map(i => ({w: i.naturalWidth, "
            "shown: i.checkVisibility() && i.getBoundingClientRect().height > 0, "
            "right: i.getBoundingClientRect().right}))"
        )
        tab.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        everything = tab.evaluate(LAYOUT)  # every detail open: still nothing wider than the phone
        seen |= {"opened": opened, "all_open": everything, "errors": tab.errors(), "urls": tab.requested_urls()}
    return seen


def assert_fits_a_phone(seen: dict) -> None:  # type: ignore[type-arg]
    assert seen["w"] == PHONE[0]
    assert seen["scrollWidth"] <= seen["w"], seen["scrollWidth"]
    assert seen["wide"] == [], seen["wide"]
    assert 0 <= seen["tableTop"] and seen["tableBottom"] <= seen["h"], (seen["tableTop"], seen["tableBottom"])
    assert seen["cells"] and all(c["inView"] for c in seen["cells"])


@needs_chromium
def test_on_a_phone_the_first_screen_answers_the_question(monday: dict[str, Path]) -> None:
    seen = phone_view(monday["page"])
    assert seen["errors"] == []
    assert all(u.startswith(("file://", "data:", "about:")) for u in seen["urls"]), seen["urls"]
    assert_fits_a_phone(seen)
    plan = expected_plan(monday)
    assert sorted(seen["heads"]) == sorted(plan["unit"].unique())
    by_key = {(r["unit"], pd.Timestamp(r["date"]).strftime("%Y-%m-%d")): r for r in plan.to_dict("records")}
    assert len(seen["cells"]) == len(by_key) == 4 * 14
    for c in seen["cells"]:
        row = by_key[(c["unit"], c["date"])]
        beds, nurses = c["text"].split("\n")[0].split(" · ")
        assert int(beds) == row["staffed_beds"] and int(nurses) == row["nurses_per_shift"]  # what is shown
        assert "%" in c["text"]  # and the run-out chance under it
    assert not seen["fanShown"]  # the fan chart is one click below ...
    assert len(seen["opened"]) == 4 and all(i["w"] > 0 and i["shown"] for i in seen["opened"])  # ... and there
    assert all(i["right"] <= PHONE[0] + 0.5 for i in seen["opened"])
    assert seen["all_open"]["scrollWidth"] <= PHONE[0] and seen["all_open"]["wide"] == [], seen["all_open"]["wide"]


@needs_chromium
def test_the_phone_check_fails_on_a_page_that_overflows(monday: dict[str, Path], tmp_path: Path) -> None:
    # The layout check must be able to fail: one element wider than the phone is caught.
    wide = tmp_path / "wide.html"
    wide.write_text(monday["page"].read_text().replace("<main>", '<main><div style="width:900px">wide</div>', 1))
    with pytest.raises(AssertionError):
        assert_fits_a_phone(phone_view(wide))
