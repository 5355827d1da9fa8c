"""Issue 24: the weekly cycle, end to end with real processes, for several weeks.

The deployment of docs/deploy.md and docs/hospital.md, started by their own commands
(``tests/e2e/test_deployment.py``'s ``Federation``): a ``flower-superlink`` with TLS, node
authentication and its database, behind the Fleet gateway (nginx); two hospitals, each a
long-running ``medalloc node start`` reaching the SuperLink through the gateway only, over its
own encounter file (patient stays, so ε is per patient). Each night of the test's "weeks" the
hospital's export job rewrites the file with the stays admitted so far and writes the date they
are complete to in ``calendar-end-file``; neither node is restarted for it (the calendar's end
is read at every round). Each week the coordinator runs ``medalloc weekly`` (``flwr run`` of
MedAlloc itself, ``init-from`` last week's model), and each hospital runs its Monday: ``medalloc
node adopt``, ``validate --daily-out``, ``forecast --node-config`` and ``plan-page``.

Two faults: hospital H001's whole node is stopped (SIGKILL to ``medalloc node start``'s session)
between two weeks and started again by its operator; hospital H000's SuperNode is killed
*during* a week's run (while it handles the week's first message, the release of its new days),
and ``medalloc node start`` brings it back by itself while the run goes on.

At the end: every week finished, each starting from the week before; each node released every
day of its calendar exactly once, its releases disjoint and in order, and its ε per patient is
what it was after week 1; every week's planner page exists for both hospitals and, from the
second week, scores the week before.

``MEDALLOC_E2E_WEEKS`` sets the number of weeks: 2 in the CI suite (the restart is before week
2 and the kill during week 2, so every assertion has something to check), 8 for the figures in
docs/coordinator.md and docs/hospital.md::

    MEDALLOC_E2E_WEEKS=8 .venv/bin/python -m pytest -p no:xdist -q -s tests/e2e/test_weekly_cycle.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.privacy.release import ReleaseStore
from tests.e2e.harness import Proc, ProcessHarness
from tests.e2e.test_deployment import COPY_IGNORE, Federation

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WEEKS = int(os.environ.get("MEDALLOC_E2E_WEEKS", "2"))
FIRST_DAYS = 120
KILLED, RESTARTED = "H000", "H001"
HOSPITALS = (KILLED, RESTARTED)
# The restarted node is stopped before week RESTART_WEEK, the killed one's SuperNode during week KILL_WEEK.
RESTART_WEEK = max(2, WEEKS // 2)
KILL_WEEK = WEEKS - 2 if WEEKS >= 4 else WEEKS
FAST = (
    "num-server-rounds=1 local-epochs=1 batch-size=32 lr=0.05 model='mlp' init='none' history=14 horizon=14 "
    "hidden=8 min-available-nodes=2 min-train-nodes=2 round-timeout=600.0"
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 + 420 * WEEKS)]


def _stays(folder: Path, hospital: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{hospital}.csv", dtype=str, keep_default_na=False)


def _export(stays: pd.DataFrame, last: pd.Timestamp, data: Path, end_file: Path) -> None:
    """The hospital's nightly export: the stays admitted up to ``last`` (a stay still open then has no discharge
    yet), written whole (a temporary file renamed), then the day they are complete to."""
    admit = pd.to_datetime(stays["admit_time"])
    known = stays[admit < last + pd.Timedelta(days=1)].copy()
    still_in = pd.to_datetime(known["discharge_time"], errors="coerce") >= last + pd.Timedelta(days=1)
    known.loc[still_in, "discharge_time"] = ""
    tmp = data.with_suffix(".tmp")
    known.to_csv(tmp, index=False)
    tmp.replace(data)
    end_file.write_text(f"{last:%Y-%m-%d}\n")


def _supernode_pid(proc: Proc) -> int:
    """The pid of the node's current SuperNode, from ``medalloc node start``'s own log line."""
    return int(re.findall(r"SuperNode pid (\d+), approved-apps gate pid", proc.read_log())[-1])


def _tails(root: Path) -> str:
    """The last lines of every process's log (what a failed week needs to be understood)."""
    return "".join(
        f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        for log in sorted((root / "logs").glob("*.log"))
    )


def _monday(fed: Federation, hospital: str, week: int, model: Path) -> tuple[Path, str]:
    """The hospital's Monday (docs/hospital.md): adopt or keep, this week's true counts, forecast, planner page."""
    node, env = fed.node_dir(hospital), fed.node_env(hospital)
    out = node / f"monday-{week}"
    fed.ok(
        f"adopt-{hospital}-{week}",
        f"medalloc node adopt --node-config node.toml --model {model}",
        env,
        cwd=node,
        timeout=600,
    )
    state = json.loads((node / "privacy-ledger.json.adopted.json").read_text())
    in_use = Path(state["current"]["file"])
    daily = node / f"daily-{week}.csv"
    fed.ok(
        f"daily-{hospital}-{week}",
        f"medalloc validate --mapping mapping.toml data/{hospital}.csv --daily-out {daily}",
        env,
        cwd=node,
        timeout=600,
    )
    fed.ok(
        f"forecast-{hospital}-{week}",
        f"medalloc forecast --model {in_use} --data {daily} --node-config node.toml --out {out}/",
        env,
        cwd=node,
        timeout=600,
    )
    fed.ok(
        f"plan-page-{hospital}-{week}",
        f"medalloc plan-page --forecast {out}/forecast.csv --data {daily} --node-config node.toml "
        f"--out {out}/plan.html",
        env,
        cwd=node,
        timeout=600,
    )
    return out / "plan.html", str(state["current"]["version"])


def test_weeks_of_new_days_through_the_gateway_one_node_restarted_one_killed_mid_week(
    harness: ProcessHarness, tmp_path: Path
) -> None:
    fed = Federation(harness, tmp_path)
    fed.start_coordinator()  # certs, SuperLink (TLS, node auth, database), gateway, the flwr config
    app = tmp_path / "medalloc-app"
    shutil.copytree(REPO, app, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    region = tmp_path / "region"
    total = FIRST_DAYS + 7 * (WEEKS - 1) + 30
    fed.ok(
        "generate",
        f"medalloc generate --shape encounters -n 2 -d {total} --seed 0 --start 2023-01-01 --out {region}",
        fed.coord_env(),
        cwd=tmp_path,
        timeout=300,
    )
    first = pd.Timestamp("2023-01-01")
    ends = [first + pd.Timedelta(days=FIRST_DAYS - 1 + 7 * k) for k in range(WEEKS)]
    stays = {h: _stays(region, h) for h in HOSPITALS}
    starts: dict[str, pd.Timestamp] = {}  # each node's declared first day (the whole months its operator saw)
    for hospital in HOSPITALS:
        export = tmp_path / f"export-{hospital}.csv"
        _export(stays[hospital], ends[0], export, tmp_path / "unused-end")
        fed.prepare_hospital(hospital, export, validate=False, app=app)
        node = fed.node_dir(hospital)
        toml = node / "node.toml"
        # The node's calendar: its units and first day as declared, its end where the export job writes it.
        text = re.sub(
            r'^calendar-end = ".*"$',
            f'calendar-end-file = "{node / "data" / "complete-through.txt"}"',
            toml.read_text(),
            flags=re.M,
        )
        assert "calendar-end-file" in text, text
        toml.write_text(text)
        starts[hospital] = pd.Timestamp(re.search(r'^calendar-start = "(.*)"$', text, flags=re.M)[1])
        _export(stays[hospital], ends[0], node / "data" / f"{hospital}.csv", node / "data" / "complete-through.txt")
    ids = {hospital: fed.register(hospital) for hospital in HOSPITALS}
    procs = {hospital: fed.start_supernode(hospital) for hospital in HOSPITALS}
    for hospital in HOSPITALS:
        assert procs[hospital].wait_for_log(r"SuperNode ID: (\d+)", timeout=180)[1] == ids[hospital]

    results = fed.coord / "results"
    seconds: list[float] = []
    wapes: list[float | None] = []
    epsilons: dict[str, list[float]] = {h: [] for h in HOSPITALS}
    pages: dict[str, list[tuple[Path, str]]] = {h: [] for h in HOSPITALS}  # (page, model version in use)
    killed_in: str | None = None
    for week in range(1, WEEKS + 1):
        if week > 1:  # the night's export: a week more of stays, and the day they are complete to
            for hospital in HOSPITALS:
                data = fed.node_dir(hospital) / "data"
                _export(stays[hospital], ends[week - 1], data / f"{hospital}.csv", data / "complete-through.txt")
        if week == RESTART_WEEK:  # restarted after last week's run (below): back before this week's
            procs[RESTARTED].wait_for_log(r"SuperNode ID: \d+", timeout=240)
        began = time.monotonic()
        tag = f"2026-W{20 + week:02d}"
        handled = procs[KILLED].read_log().count("is approved;")
        weekly = harness.start(
            f"weekly-{week}",
            ["medalloc", "weekly", "--app", str(app), "--federation", "medalloc", "--results", str(results)]
            + ["--week", tag, "--run-config", FAST, "--wait", "1200", "--flwr", str(BIN / "flwr")],
            cwd=fed.coord,
            env=fed.coord_env(),
        )
        if week == KILL_WEEK:  # the SuperNode killed while it handles the week's first message
            deadline = time.monotonic() + 300
            while procs[KILLED].read_log().count("is approved;") == handled and time.monotonic() < deadline:
                assert weekly.popen.poll() is None, weekly.read_log() + _tails(tmp_path)
                time.sleep(0.2)
            time.sleep(1.0)
            pid = _supernode_pid(procs[KILLED])
            os.kill(pid, signal.SIGKILL)
            killed_in = f"week {week}, SuperNode pid {pid}"
        weekly.popen.wait(timeout=1500)
        out = weekly.read_log()
        assert weekly.popen.returncode == 0, out + _tails(tmp_path)
        seconds.append(time.monotonic() - began)
        expected = f"from {results / f'week-2026-W{19 + week:02d}'}" if week > 1 else "from the run config's init"
        assert expected in " ".join(out.split()), out
        folder = results / f"week-{tag}"
        assert (folder / "final_model.safetensors").is_file()
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        wapes.append(rows[-1].get("evaluate", {}).get("eval-wape"))
        for hospital in HOSPITALS:
            ledger = PrivacyLedger.load(fed.node_dir(hospital) / "privacy-ledger.json")
            epsilons[hospital].append(ledger.epsilon_spent())
        if week + 1 == RESTART_WEEK:  # the whole node stopped (power, reboot) and started again by its operator
            # now, between two weeks: the SuperLink refuses it (305) until it has missed 2 heartbeats of 30 s, and
            # `medalloc node start` retries meanwhile, while the hospitals have their Monday
            os.killpg(procs[RESTARTED].pid, signal.SIGKILL)
            procs[RESTARTED].popen.wait(timeout=30)
            procs[RESTARTED].log.replace(procs[RESTARTED].log.with_name(f"supernode-{RESTARTED}-before-restart.log"))
            procs[RESTARTED] = fed.start_supernode(RESTARTED)
        # Each hospital's Monday on its own machine: the two at once here (each is four short commands).
        with ThreadPoolExecutor(len(HOSPITALS)) as pool:
            mondays = {h: pool.submit(_monday, fed, h, week, folder / "final_model.safetensors") for h in HOSPITALS}
            for hospital, monday in mondays.items():
                pages[hospital].append(monday.result())

    # The killed SuperNode came back by itself (medalloc node start), the restarted node by its operator.
    assert killed_in is not None
    log = procs[KILLED].read_log()
    assert re.search(r"the SuperNode \(pid \d+\) exited with status -9", log), log[-3000:]
    assert len(re.findall(r"SuperNode ID: \d+", log)) >= 2, log[-3000:]
    assert all(p.popen.poll() is None for p in procs.values())
    for hospital in HOSPITALS:
        node = fed.node_dir(hospital)
        ledger = PrivacyLedger.load(node / "privacy-ledger.json")
        releases = [s for s in ledger.spends() if s.mechanism == "source-release"]
        spans = [(pd.Timestamp(s.days[0]), pd.Timestamp(s.days[1])) for s in releases]
        assert spans[0][0] == starts[hospital], spans
        assert spans[-1][1] == ends[-1], spans
        for (_, before), (after, _) in zip(spans, spans[1:], strict=False):
            assert after == before + pd.Timedelta(days=1), spans  # disjoint, in order, no day left out
        assert len(releases) <= WEEKS
        store = ReleaseStore.open(node / "privacy-ledger.json.released.csv").frame
        released = pd.to_datetime(store["date"])
        assert released.min() == starts[hospital] and released.max() == ends[-1]
        assert released.nunique() == (ends[-1] - starts[hospital]).days + 1
        assert not store.duplicated(["date", "unit"]).any()
        assert epsilons[hospital] == pytest.approx([epsilons[hospital][0]] * WEEKS, abs=1e-9), epsilons
        for week, (page, _) in enumerate(pages[hospital], start=1):
            html = page.read_text(encoding="utf-8")
            assert 'id="plan-table"' in html and 'id="accountability"' in html, page
            section = html[html.index('id="accountability"') :]
            scored = re.findall(r'<tr data-unit="[^"]+" data-target="[^"]+" data-wape="([0-9.]+)"', section)
            if week == 1:  # nothing to score yet
                assert not scored, page
            else:  # last week's forecast, made with last week's model in use, against what happened
                assert scored and pages[hospital][week - 2][1] in section, page
    per_week = ", ".join(f"{s:.0f}" for s in seconds)
    print("\n" + _accuracy_evidence(fed, results, ends, wapes))
    print(
        f"{WEEKS} weeks (killed mid-week: {killed_in}; {RESTARTED} restarted before week {RESTART_WEEK}): "
        f"seconds per weekly cycle {per_week} (mean {sum(seconds) / len(seconds):.0f}); "
        f"epsilon per patient after {WEEKS} weeks {', '.join(f'{h} {e[-1]:.4f}' for h, e in epsilons.items())} "
        f"(after week 1: {', '.join(f'{h} {e[0]:.4f}' for h, e in epsilons.items())}); "
        f"source releases {', '.join(f'{h} {n}' for h, n in _release_counts(fed).items())}; eval-wape per week "
        + ", ".join("n/a" if w is None else f"{w:.3f}" for w in wapes)
    )


def _release_counts(fed: Federation) -> dict[str, int]:
    return {
        h: sum(
            s.mechanism == "source-release"
            for s in PrivacyLedger.load(fed.node_dir(h) / "privacy-ledger.json").spends()
        )
        for h in HOSPITALS
    }


def _accuracy_evidence(fed: Federation, results: Path, ends: list[pd.Timestamp], wapes: list[float | None]) -> str:
    """Why eval-WAPE moves from week to week, per week (both nodes pooled): each week's model and week 1's model on
    that week's test days of the nodes' releases (``adoption.score_model``: what ``eval-wape`` scores), the
    release's own error on those days (released against true counts: no forecast can be scored below it on
    average) and the true level there. Week 1's model rising with the week's model says the days got harder, not
    the training worse; the noise floor rising with it says by how much the release's noise explains it."""
    from medalloc_core.contract import Frequency, UnitRecords
    from medalloc_core.model_io import load_model
    from medalloc_core.tasks.forecasting.adoption import score_model

    first_model = results / "week-2026-W21" / "final_model.safetensors"
    spec = load_model(first_model).spec.resolved(Frequency.DAILY)
    targets = list(spec.targets)
    lines = ["week  eval-wape  own-model  week-1-model  noise-floor  true-level  (test days)"]
    for week, end in enumerate(ends, start=1):
        own, fixed, floor_num, floor_den, level = [], [], 0.0, 0.0, []
        for hospital in HOSPITALS:
            node = fed.node_dir(hospital)
            store = ReleaseStore.open(node / "privacy-ledger.json.released.csv").records()
            frame = store.frame[store.frame["date"] <= end].reset_index(drop=True)
            released = UnitRecords(frame, store.frequency, store.source, store.shape)
            own.append(score_model(results / f"week-2026-W{20 + week:02d}" / "final_model.safetensors", released).wape)
            fixed.append(score_model(first_model, released).wape)
            true = pd.read_csv(node / f"daily-{week}.csv", parse_dates=["date"])
            days = sorted(frame["date"].unique())[-spec.test_periods :]
            noisy = frame[frame["date"].isin(days)].set_index(["date", "unit"])[targets]
            exact = true[true["date"].isin(days)].set_index(["date", "unit"])[targets].reindex(noisy.index).fillna(0)
            floor_num += float((noisy - exact).abs().to_numpy().sum())
            floor_den += float(exact.abs().to_numpy().sum())
            level.append(float(exact.to_numpy().mean()))
        wape = wapes[week - 1]
        lines.append(
            f"{week:>4}  {'n/a' if wape is None else f'{wape:.3f}':>9}  {sum(own) / len(own):>9.3f}  "
            f"{sum(fixed) / len(fixed):>12.3f}  {floor_num / floor_den:>11.3f}  {sum(level) / len(level):>10.1f}  "
            f"({days[0]:%m-%d}..{days[-1]:%m-%d})"
        )
    return "\n".join(lines)
