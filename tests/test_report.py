"""`medalloc report`: one self-contained page per run, checked in a real headless Chromium.

The fast tests build a results folder the way a run leaves it (summary.json, metrics.jsonl with
a refusal and a dropped reply, PNG plots, an allocation plan made by the real planners) and
read the page back; the browser tests load it in Chromium from the OS packages and check that
it loads without console errors, that every image renders and that the comparison table shows
summary.json's numbers. The slow test does the same on the page `medalloc simulate` writes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from medalloc.cli import app  # noqa: E402
from medalloc_core.allocation.explain_plans import hospital_plan_reasons, write_regional_explanation  # noqa: E402
from medalloc_core.allocation.newsvendor import plan_hospital  # noqa: E402
from medalloc_core.allocation.regional import RegionalConfig, plan_region, write_regional_plan  # noqa: E402
from medalloc_core.report import ReportError, build_report, per_hospital_privacy, write_report  # noqa: E402
from tests.allocation_fixtures import forecast_frame  # noqa: E402
from tests.browser import Chromium, chromium_binary  # noqa: E402

runner = CliRunner()
HOSTILE = '<img src=x onerror="alert(1)">'
METHODS = ("federated", "local only", "seasonal_naive")


def _png(path: Path, title: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1, 2], [1, 3, 2])
    ax.set_title(title)
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _scores(seed: float) -> dict[str, float]:
    return {
        "mae": 3.1 + seed,
        "rmse": 4.2 + seed,
        "wape": 0.123456 + seed / 10,
        "pinball": 1.5 + seed,
        "coverage": 0.8,
        "width": 9.5,
    }


def make_results(folder: Path) -> Path:
    """A results folder as `medalloc simulate` leaves it, plus a privacy field another branch may add."""
    hospitals = ["H000", "H001", HOSTILE]
    methods = {
        m: {
            "overall": {"volume_weighted": _scores(i * 0.5), "unweighted": _scores(i * 0.6)},
            "per_hospital": {h: _scores(i + k) | {"volume": 100.0} for k, h in enumerate(hospitals)},
        }
        for i, m in enumerate(METHODS)
    }
    summary = {
        "scenario": "report-test",
        "source": "test.toml",
        "hospitals": hospitals,
        "federation": {
            "strategy": "fedavg",
            "rounds": 2,
            "local_epochs": 1,
            "epsilon_budget": 10.0,
            "delta": 1e-5,
            "epsilon_per_hospital": {"H000": 2.345678, "H001": 1.5, HOSTILE: 0.25},
            # a field the privacy branch adds: the report must show it without being told
            "patient_epsilon_per_hospital": {"H000": 0.91, "H001": 0.77, HOSTILE: 0.5},
        },
        "privacy": {"unit": "patient", "epsilon_max": 2.345678, "delta": 1e-6, "meaning": "a stay of up to 28 nights"},
        "methods": methods,
        "local_only_dp_epsilon": {"H000": 2.3, "H001": 1.4},
        "timing_seconds": {"region": 0.5, "federation": 40.0},
        "files": ["metrics.jsonl", "summary.json"],
    }
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    (folder / "scenario.toml").write_text(
        'name = "report-test"\n[region]\nhospitals = 3\n[federation]\nnum-server-rounds = 2\n'
    )
    rounds = [
        {"round": 0, "time": "t0", "evaluate": {"eval-mae": 9.0, "eval-wape": 0.4}},
        {
            "round": 1,
            "time": "t1",
            "seconds": 3.0,
            "train": {"train-loss": 0.5},
            "evaluate": {"eval-mae": 5.0, "eval-wape": 0.2},
            "nodes": {"sampled": 3, "accepted": 2, "refused": 1},
            "epsilon-max": 1.2,
            "outcomes": [
                {"node": "11", "status": "accepted", "hospital": "H000"},
                {"node": "12", "status": "accepted", "hospital": "H001"},
                {"node": "13", "status": "refused", "hospital": HOSTILE, "reason": "privacy-budget-exhausted"},
            ],
        },
        {
            "round": 2,
            "time": "t2",
            "seconds": 2.5,
            "train": {"train-loss": 0.4},
            "evaluate": {"eval-mae": 4.0, "eval-wape": 0.15},
            "nodes": {"sampled": 3, "accepted": 2, "dropped": 1},
            "epsilon-max": 2.3,
            "outcomes": [
                {"node": "11", "status": "accepted", "hospital": "H000"},
                {"node": "12", "status": "dropped", "hospital": "H001", "reason": "update norm 512.0 above 100.0"},
                {"node": "13", "status": "accepted", "hospital": HOSTILE},
            ],
        },
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    for name in ("metrics_per_round", "comparison_wape", "forecast_H000", "forecast_H001"):
        _png(folder / "plots" / f"{name}.png", name)
    # the allocation plan, made by the real planners
    alloc = folder / "allocation"
    frame = forecast_frame({("H000", "ICU"): [(8.0, 10.0, 14.0)] * 3, ("H001", "ward"): [(30.0, 35.0, 44.0)] * 3})
    import pandas as pd

    capacity = pd.DataFrame({"hospital": ["H000", "H001"], "unit": ["ICU", "ward"], "beds": [12, 50]})
    plan = plan_hospital(frame, capacity)
    alloc.mkdir()
    plan.to_csv(alloc / "plan.csv", index=False)
    (alloc / "plan_explanation.txt").write_text("\n\n".join(hospital_plan_reasons(plan)) + "\n")
    _png(alloc / "plan_H000.png", "plan")
    shared = frame.groupby(["hospital", "date", "q"], as_index=False)["value"].sum()
    regional = plan_region(shared, {"H000": 9.0, "H001": 33.0}, RegionalConfig(surge_pool=2.0, scenarios=8))
    write_regional_plan(regional, alloc / "regional")
    write_regional_explanation(regional, alloc / "regional")
    _png(alloc / "regional" / "regional.png", "regional")
    return folder


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("run") / "results")


# ------------------------------------------------------------------ the page's content
def test_page_is_self_contained(results: Path) -> None:
    html = build_report(results)
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html and "http://" not in html and "https://" not in html
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert len(sources) == 6  # 2 forecasts, rounds, comparison, a bed plan, the regional plan: every PNG
    assert all(s.startswith("data:image/png;base64,") for s in sources)


def test_page_escapes_what_it_reads(results: Path) -> None:
    html = build_report(results)
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_privacy_columns_are_whatever_summary_reports(results: Path) -> None:
    summary = json.loads((results / "summary.json").read_text())
    columns = per_hospital_privacy(summary)
    assert set(columns) == {
        "federation.epsilon_per_hospital",
        "federation.patient_epsilon_per_hospital",
        "local_only_dp_epsilon",
    }
    html = build_report(results)
    assert 'data-field="federation.patient_epsilon_per_hospital" data-hospital="H000" data-value="0.91"' in html
    assert ">2.346<" in html  # H000's epsilon, three decimals
    assert "What the guarantee means:</b> a stay of up to 28 nights" in html
    assert "largest ε per patient spent by a node" in html
    settings = html[html.index('id="privacy-settings"') :]
    assert re.search(r"privacy\.epsilon_max</td><td[^>]*>2\.346</td>", settings)  # scalars: 4 significant digits
    assert "federation.epsilon_per_hospital.H000" not in settings  # per-hospital maps are columns, not rows


def test_refusals_and_dropped_replies_are_listed(results: Path) -> None:
    html = build_report(results)
    section = html[html.index('id="refusals"') :]
    section = section[: section.index("</section>")]
    assert "privacy-budget-exhausted" in section and "update norm 512.0 above 100.0" in section
    assert section.count('<td class="bad">') == 2


def test_a_folder_without_a_summary_is_refused_by_the_command(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="holds neither summary.json nor run-summary.json"):
        build_report(tmp_path)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not the results folder of `medalloc simulate`" in " ".join(result.output.split())
    assert not (tmp_path / "report.html").exists()
    (tmp_path / "summary.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not readable JSON" in result.output


def test_missing_parts_are_said_to_be_missing(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"scenario": "bare", "hospitals": ["H000"], "methods": {}}))
    html = build_report(folder)
    assert "summary.json holds no method results" in html
    assert "No metrics.jsonl in the results folder" in html
    assert "No allocation plan in this results folder" in html


def test_odd_types_in_the_files_show_as_missing_not_as_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    (folder / "allocation").mkdir(parents=True)
    summary = {"hospitals": "H000", "methods": {"federated": 3, "x": {"overall": []}}, "federation": [1], "files": 7}
    (folder / "summary.json").write_text(json.dumps(summary | {"timing_seconds": "slow"}))
    (folder / "metrics.jsonl").write_text(
        '{"round": 1, "nodes": [], "outcomes": {"a": 1}, "train": 5}\n[1]\nnot json\n'
    )
    (folder / "allocation" / "plan.csv").write_text(
        "hospital,unit,staffed_beds,demand_p50,physical_beds,p_overflow\nH,u,x,y,z,w\n"
    )
    html = build_report(folder)
    assert "The plan files could not be read" in html
    assert 'id="comparison"' in html and 'id="rounds"' in html


def test_command_writes_the_page_and_keeps_other_files(results: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(results)])
    assert result.exit_code == 0, result.output
    assert (results / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert runner.invoke(app, ["report", str(results)]).exit_code == 0  # an earlier report is simply renewed
    other = tmp_path / "notes.html"
    other.write_text("<p>my notes</p>")
    result = runner.invoke(app, ["report", str(results), "--out", str(other)])
    assert result.exit_code == 2 and "is not a MedAlloc report" in result.output
    assert other.read_text() == "<p>my notes</p>"
    assert runner.invoke(app, ["report", str(results), "--out", str(other), "--force"]).exit_code == 0


# ------------------------------------------------------------------ in a real browser
# Skipped only off CI: in CI (`make test` as root installs Chromium) a missing browser is a failure, not a skip.
needs_chromium = pytest.mark.skipif(
    chromium_binary() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (make test installs it as root: apt-get install chromium)",
)


def check_in_browser(page_path: Path, summary: dict, screenshot: Path) -> dict:  # type: ignore[type-arg]
    """Load the page in Chromium and assert what a planner relies on; returns what the page showed."""
    binary = chromium_binary()
    assert binary is not None
    with Chromium(binary) as browser:
        tab = browser.open(page_path.resolve().as_uri())
        images = tab.evaluate(
            "[...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
        )
        cells = tab.evaluate(
            "[...document.querySelectorAll('#comparison td[data-metric]')].map(td => "
            "({method: td.dataset.method, metric: td.dataset.metric, value: td.dataset.value, text: td.textContent}))"
        )
        title = tab.evaluate("document.title")
        errors = tab.errors()
        urls = tab.requested_urls()
        tab.screenshot(screenshot)
    assert errors == []
    assert images and all(i["complete"] and i["width"] > 0 for i in images), images
    assert all(u.startswith(("file://", "data:")) for u in urls), urls  # nothing from the network
    methods = summary["methods"]
    assert {c["method"] for c in cells} == set(methods)
    for c in cells:
        expected = methods[c["method"]]["overall"]["volume_weighted"][c["metric"]]
        assert float(c["value"]) == expected  # the exact number behind the cell
        digits = len(c["text"].split(".")[1])
        assert float(c["text"]) == pytest.approx(expected, abs=0.5 * 10**-digits + 1e-12)  # and what it shows
    return {"images": images, "cells": cells, "title": title}


@needs_chromium
def test_page_loads_cleanly_in_chromium_and_shows_summary_numbers(results: Path, tmp_path: Path) -> None:
    page = write_report(results, tmp_path / "report.html")
    seen = check_in_browser(page, json.loads((results / "summary.json").read_text()), tmp_path / "report.png")
    assert seen["title"] == "MedAlloc run: report-test"
    assert len(seen["images"]) == 6
    assert len(seen["cells"]) == len(METHODS) * 6
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_the_browser_check_fails_on_a_broken_image(results: Path, tmp_path: Path) -> None:
    # The check above must be able to fail: a page whose image does not decode is caught.
    page = tmp_path / "broken.html"
    html = write_report(results, tmp_path / "ok.html").read_text()
    page.write_text(html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    with pytest.raises(AssertionError):
        check_in_browser(page, json.loads((results / "summary.json").read_text()), tmp_path / "b.png")


# One Ray actor whatever the CPU count (all CPUs for one virtual node at a time): a second only imports the apps again.
SIMULATION = f"[simulation]\nclient-cpus = {os.cpu_count() or 1}\n"
SMALL = (
    """
name = "report-e2e"
[region]
hospitals = 3
days = 240
seed = 3
short_history_fraction = 0.0
min_beds = 60
max_beds = 300
[federation]
model = "mlp"  # a tiny seeded MLP: the default hybrid's pretrained weights need history 28
init = "none"
num-server-rounds = 2
local-epochs = 1
history = 14
horizon = 7
hidden = 16
batch-size = 32
[privacy]
epsilon = 4.0
reproducible-noise = true
[comparisons]
local-only-dp = false
centralized = false
baselines = ["seasonal_naive"]
[output]
forecast-plots = 2
"""
    + SIMULATION
)


@pytest.mark.slow
@needs_chromium
def test_simulate_writes_a_report_that_chromium_renders(tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL)
    out = tmp_path / "results"
    result = runner.invoke(app, ["simulate", "--config", str(scenario), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    seen = check_in_browser(out / "report.html", summary, tmp_path / "simulate-report.png")
    alts = {i["alt"] for i in seen["images"]}
    assert {"metrics per round", "test WAPE per hospital", "regional plan", "bed plan H000"} <= alts
    html = (out / "report.html").read_text()
    assert 'id="plan"' in html and "critical ratio is 10/(10+1) = 0.909" in html
    for hospital, epsilon in summary["federation"]["epsilon_per_hospital"].items():
        assert (
            f'data-field="federation.epsilon_per_hospital" data-hospital="{hospital}" data-value="{epsilon!r}"' in html
        )
    assert (out / "allocation" / "regional" / "binding_constraints.csv").is_file()
    if "privacy" in summary:  # the patient-level headline the privacy work added to summary.json
        assert "What the guarantee means:" in html
