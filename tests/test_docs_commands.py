"""Every shell block the docs tell a user to run is run here, as written, or names the test that runs it.

Each fenced ``bash`` block in README.md and docs/*.md carries one of these info strings:

- ``bash run``: run by this file, in page order, in one fresh folder per page (``bash run:source``:
  in the MedAlloc source folder, for the install commands the pages give). The page's placeholders
  (a hospital's database URL, ``/opt/medalloc-node``) are swapped for the test's own files by a
  small table below; every swapped text must occur in the page, so a changed page fails here.
- ``bash e2e:NAME``: run as written by the end-to-end test of that page (docs/deploy.md and
  docs/hospital.md: tests/e2e/test_deployment.py; docs/equipment.md: tests/test_equipment_docs.py).
- ``bash covered:TEST``: not run here because it runs for minutes or needs a live federation
  (a SuperLink, a run id); TEST is the file that runs the same command.

The commands run with a venv made once per test session: ``python -m venv --without-pip``, the
repository venv's site-packages added by a ``.pth`` (no download, nothing reinstalled), then
``pip install --no-deps -e`` of this source folder into it, i.e. the install the pages give
(``python -m pip install -e .``). Its ``bin/`` is first on PATH, so ``medalloc`` and ``python``
are the ones a user of that venv gets, and ``python -m server.certs`` (the name that only
resolved with the source folder on ``sys.path``) fails as it did for users.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```bash([^\n]*)\n(.*?)^```", re.M | re.S)
E2E_TESTS = {
    "deploy.md": "tests/e2e/test_deployment.py",
    "hospital.md": "tests/e2e/test_deployment.py",
    "equipment.md": "tests/test_equipment_docs.py",
}


def page_blocks(page: Path) -> list[tuple[str, str]]:
    """(info string after ``bash``, body) of every bash block of a page, in order."""
    return [(m[1].strip(), m[2]) for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


def test_every_bash_block_says_who_runs_it() -> None:
    unmarked, missing = [], []
    for page in PAGES:
        for info, body in page_blocks(page):
            if info in ("run", "run:source"):
                continue
            if info.startswith("e2e:"):
                test = E2E_TESTS.get(page.name)
                if test is None or page.name not in (REPO / test).read_text(encoding="utf-8"):
                    missing.append(f"{page.name}: e2e block but no e2e test reads this page")
                continue
            if info.startswith("covered:"):
                test = info.removeprefix("covered:").strip()
                if not (REPO / test).is_file():
                    missing.append(f"{page.name}: covered by {test}, which does not exist")
                continue
            unmarked.append(f"{page.name}: ```bash{(' ' + info) if info else ''}\n{body[:120]}")
    assert not unmarked, "bash blocks nobody runs (mark them run, e2e:NAME or covered:TEST):\n" + "\n".join(unmarked)
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------- the venv the pages install


@pytest.fixture(scope="session")
def doc_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with this source folder installed editable (``pip install --no-deps -e``), its
    dependencies taken from the repository's venv through a .pth (2 cores: no fresh download)."""
    venv = tmp_path_factory.mktemp("doc-venv") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz_repo_venv.pth").write_text(f"import site; site.addsitedir({str(purelib)!r})\n", encoding="utf-8")
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-e",
            str(REPO),
        ],
        check=True,
        timeout=600,
        cwd=REPO,
    )
    assert (venv / "bin" / "medalloc").is_file()
    return venv


def run_block(body: str, cwd: Path, venv: Path, home: Path) -> str:
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "VIRTUAL_ENV": str(venv),
        "MPLBACKEND": "Agg",
        "PIP_NO_INDEX": "1",  # a page's `pip install` must be satisfied by what is installed: no download
        "PIP_NO_BUILD_ISOLATION": "0",  # (pip's inverted switch) build with the installed setuptools
        "FLWR_TELEMETRY_ENABLED": "0",
        "COLUMNS": "100",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"in {cwd}:\n{body}\n---\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return output


# ---------------------------------------------------------------- per page: what the page assumes exists


# What a page assumes exists is made in the test's own process (it is not what a page tests, and each `python` started
# for it imported torch again), and what two pages assume alike is made once per session and copied.


def _generate(out: Path, *args: str) -> None:
    """``medalloc generate ARGS --out OUT`` in this process (what the page's folder starts with, not a page command)."""
    from typer.testing import CliRunner

    from medalloc.cli import app

    result = CliRunner().invoke(app, ["generate", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output


def _model(cwd: Path, target: Path, data: str = "data/H000.csv") -> None:
    """A small shared model where the pages say ``results/default/final_model.safetensors``:
    one hospital trained locally (what ``medalloc simulate`` writes, in seconds)."""
    from medalloc_core.forecast.features import WindowSpec, prepare_hospital
    from medalloc_core.forecast.models import ForecasterConfig, build_model
    from medalloc_core.forecast.training import TrainConfig, train_local
    from medalloc_core.model_io import save_model
    from medalloc_core.validation import load_unit_records

    records = load_unit_records(cwd / data)
    spec = WindowSpec(history=14, horizon=7, val_periods=14, test_periods=14)
    dataset = prepare_hospital(records, spec)
    config = ForecasterConfig(history=14, horizon=7, n_features=dataset.n_features, n_targets=2, hidden=16)
    model = build_model(config, seed=0)
    train_local(model, dataset.train, config=TrainConfig(epochs=1, batch_size=64, lr=0.01))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model(target, model, spec=dataset.spec)


def _ledger(path: Path) -> None:
    """The node's privacy ledger, as its first run leaves it (budget 1.5 per patient, stays up to 14 nights)."""
    from medalloc_core.privacy.ledger import PrivacyLedger

    path.parent.mkdir(parents=True, exist_ok=True)
    PrivacyLedger.open(path, epsilon_budget=1.5, delta=1e-6, unit="patient", max_stay_days=14)


def _node_toml(cwd: Path, data: str) -> None:
    """The node's node.toml as hospital.md writes it (its own paths, the hospital's one id)."""
    (cwd / "node" / "node.toml").write_text(
        f'hospital-id = "H000"\ndata-path = "{cwd / data}"\nledger-path = "{cwd / "node" / "privacy-ledger.json"}"\n'
        "privacy-epsilon-budget = 1.5\nprivacy-delta = 1e-6\nmax-stay-days = 14\n",
        encoding="utf-8",
    )


def _region_and_model(cwd: Path, venv: Path) -> None:
    """data/ (two hospitals, 200 days, seed 3) and results/default/final_model.*: made once a session (beside the
    session's doc venv), copied into ``cwd``."""
    shared = venv.parent / "allocation"
    if not shared.is_dir():
        making = venv.parent / "allocation.making"
        shutil.rmtree(making, ignore_errors=True)
        _generate(making / "data", "--hospitals", "2", "--days", "200", "--seed", "3")
        _model(making, making / "results" / "default" / "final_model.safetensors")
        making.rename(shared)
    for folder in ("data", "results"):
        shutil.copytree(shared / folder, cwd / folder)


def setup_allocation(cwd: Path, venv: Path) -> None:
    _region_and_model(cwd, venv)
    _ledger(cwd / "node" / "privacy-ledger.json")
    _node_toml(cwd, "data/H000.csv")


def setup_explain(cwd: Path, venv: Path) -> None:
    setup_allocation(cwd, venv)


def setup_hospital(cwd: Path, venv: Path) -> None:
    """The node's OMOP database (SQLite here, PostgreSQL on the page), its mapping, the federation's model."""
    _generate(cwd / "omop", "--hospitals", "1", "--days", "200", "--seed", "3", "--shape", "omop")
    _generate(cwd / "daily", "--hospitals", "1", "--days", "200", "--seed", "3")
    (cwd / "mapping.toml").write_text("[omop]\ninpatient-visit-concepts = [9201, 262]\n", encoding="utf-8")
    _ledger(cwd / "node" / "privacy-ledger.json")
    _node_toml(cwd, "omop/H000.sqlite")
    _model(cwd, cwd / "final_model.safetensors", data="daily/H000.csv")


PageSetup = Callable[[Path, Path], None]
# page -> (what must exist before its first block, {documented text: the test's own}).
PLANS: dict[str, tuple[PageSetup | None, dict[str, str]]] = {
    "synthetic.md": (None, {}),
    "allocation.md": (setup_allocation, {"/opt/medalloc-node/": "node/"}),
    "explain.md": (setup_explain, {}),
    "hospital.md": (
        setup_hospital,
        {
            "postgresql://medalloc_reader@omop-db.hospital.local/omop": "omop/H000.sqlite",
            "/opt/medalloc-node/mapping.toml": "mapping.toml",
            "/opt/medalloc-node/": "node/",
        },
    ),
}


def runnable_pages() -> list[str]:
    return sorted(p.name for p in PAGES if any(info.startswith("run") for info, _ in page_blocks(p)))


def test_every_page_with_run_blocks_has_a_plan() -> None:
    assert set(runnable_pages()) <= set(PLANS), sorted(set(runnable_pages()) - set(PLANS))


@pytest.mark.slow
@pytest.mark.parametrize("page_name", runnable_pages())
def test_the_page_runs_as_written(page_name: str, doc_venv: Path, tmp_path: Path) -> None:
    page = next(p for p in PAGES if p.name == page_name)
    setup, substitutions = PLANS[page_name]
    home = tmp_path / "home"
    home.mkdir()
    if setup is not None:
        setup(tmp_path, doc_venv)
    blocks = [(info, body) for info, body in page_blocks(page) if info.startswith("run")]
    text = "".join(body for _, body in blocks)
    for old in substitutions:
        assert old in text, f"{page_name} no longer says {old!r}"
    for info, body in blocks:
        for old, new in substitutions.items():
            body = body.replace(old, new)
        run_block(body, REPO if info == "run:source" else tmp_path, doc_venv, home)
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_the_source_folder_is_not_on_the_path_of_the_doc_venv(doc_venv: Path, tmp_path: Path) -> None:
    """The venv resolves the installed names, not the repository's top-level folders (the old doc bug)."""
    python = str(doc_venv / "bin" / "python")
    ok = subprocess.run([python, "-c", "import medalloc.server.certs, medalloc.client.keys"], cwd=tmp_path, timeout=120)
    assert ok.returncode == 0
    bad = subprocess.run(
        [python, "-c", "import server.certs"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "No module named 'server'" in bad.stderr
