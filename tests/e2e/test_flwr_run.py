"""`flwr run .` on the project, as docs/simulate.md tells a researcher to run it, and what `pip install .` installs.

The managed local SuperLink that `flwr run .` starts is tagged by the harness (it inherits the
environment), so teardown stops it and its SuperExec by PID. The run uses the project's own
environment (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``): Flower would otherwise
``uv sync`` the app's dependencies into a per-run environment, a multi-GB CUDA torch included.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from tests.e2e.harness import ProcessHarness, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _copy_project(dest: Path) -> Path:
    """The tracked files of the working tree (what a researcher has after cloning)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def test_flwr_run_on_the_project_trains_with_the_projects_own_environment(
    harness: ProcessHarness, tmp_path: Path
) -> None:
    short_tmp = tempfile.mkdtemp(prefix="mfr-", dir="/tmp")
    try:
        _flwr_run(harness, tmp_path, short_tmp)
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)


def _flwr_run(harness: ProcessHarness, tmp_path: Path, short_tmp: str) -> None:
    project = _copy_project(tmp_path / "project")
    out = tmp_path / "out"
    env = harness.env(
        PATH=f"{BIN}:{harness.env()['PATH']}",
        FLWR_HOME=str(tmp_path / "flwr-home"),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        # The virtual nodes' generated region goes here, not into a shared /tmp; short, because Ray
        # puts its Unix sockets under TMPDIR and a socket path may not exceed 107 bytes.
        TMPDIR=short_tmp,
    )
    overrides = f"num-server-rounds=2 local-epochs=1 simulation-days=300 out-dir='{out}'"
    result = harness.run(
        "flwr-run",
        [str(BIN / "flwr"), "run", ".", "--stream", "--run-config", overrides],
        cwd=project,
        env=env,
        timeout=480,
    )
    # `flwr run --stream` exits 0 even when the run itself failed: the files are the verdict.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "metrics.jsonl").is_file(), (result.stdout + result.stderr)[-4000:]
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["nodes"] == {"sampled": 5, "accepted": 5} for r in rounds[1:]), rounds
    assert (out / "final_model.safetensors").is_file() and (out / "checkpoints" / "round-0002.json").is_file()
    # No per-run environment was built: nothing was installed behind the researcher's back.
    assert not list((tmp_path / "flwr-home").rglob("runtime-envs/*")), "Flower built a runtime environment"
    assert "uv sync" not in (result.stdout + result.stderr)


def test_pip_install_puts_nothing_generic_at_the_top_of_site_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A non-editable install into a fresh, empty venv; the dependencies (torch, flwr, ...) come
    # from this environment through a .pth line, read after the venv's own site-packages, so
    # nothing is downloaded and this environment's editable install of the project is not seen.
    # Not the source folder either: a PYTHONPATH naming it (one leaked into the worker's environment
    # in a full run) makes pip call the wheel already installed and the probe import the source's
    # medalloc/, which holds no client/.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(own) / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The wheel is built by this environment's setuptools (the venv's bundled one is too old for
    # the project's metadata), from a copy so that no build output lands in the repository.
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(_copy_project(tmp_path / "project")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    install = subprocess.run(
        # --ignore-installed: the .pth line shows pip this environment's editable install of the same version,
        # which it would otherwise call "already satisfied" and skip, with exit status 0
        [str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", *map(str, wheels.glob("*.whl"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    purelib = own
    top = {p.name for p in Path(purelib).iterdir()}
    assert {"medalloc", "medalloc_core"} <= top
    assert not {"client", "server", "simulations"} & top
    assert {p.name for p in (Path(purelib) / "medalloc").iterdir()} >= {"cli", "client", "server", "simulations"}
    # The installed package runs from outside the repository: the apps import under the namespace.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import medalloc.client.app, medalloc.server.app, medalloc.simulations.runner; "
            "import importlib.util as u; print(u.find_spec('client'), u.find_spec('server'))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == ["None", "None"]
    assert sysconfig.get_paths()["purelib"] != purelib  # it really was another environment
