"""The node's fast path (issue 25): a warm launcher that never holds app code, a SuperNode that pulls more often,
a ServerApp that collects replies without Flower's fixed 3 s wait. The whole path on real processes:
tests/e2e/test_approved_apps.py (a gated node trains through the warm launcher) and
``python -m simulations.benchmarks.deployment`` (the round overhead)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from medalloc.node import warm
from medalloc.node.supernode import CappedClock
from medalloc.node.supervisor import gate_argv, supernode_argv

REPO = Path(__file__).resolve().parents[1]


class _Spec:
    """What the gate hands the launcher for one task (the fields of Flower's ExecutionSpec it reads)."""

    runtime_api_address = "127.0.0.1:9"
    token = "t"
    insecure = True
    root_certificates_path = None
    parent_pid = None
    runtime_dependency_install = False


def test_the_launcher_starts_with_the_first_task_and_holds_the_libraries_but_none_of_the_app(
    tmp_path: Path, monkeypatch
) -> None:
    # App packages in the launcher's working folder that would leave a mark if anything imported them:
    # a child must load the app from the folder Flower installed and the gate checked, never from here.
    for package in warm.APP_PACKAGES:
        (tmp_path / package).mkdir()
        mark = f"open({str(tmp_path / 'IMPORTED')!r}, 'a').write('{package}')\n"
        (tmp_path / package / "__init__.py").write_text(mark)
    monkeypatch.chdir(tmp_path)
    launcher = warm.WarmLauncher(start_timeout_s=600, first_wait_s=0)
    try:
        began = time.monotonic()
        with pytest.raises(warm.LauncherStarting):  # not ready yet: the gate declines, Flower offers the task again
            launcher.launch(_Spec())
        assert time.monotonic() - began < 5
        deadline = time.monotonic() + 600
        while launcher.pid is None and time.monotonic() < deadline:  # started meanwhile, for the next message
            time.sleep(0.5)
        pid = launcher.pid
        assert pid is not None, "the launcher did not become ready"
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "torch" in maps and "pandas" in maps  # the libraries are loaded once, in the launcher
        assert not (tmp_path / "IMPORTED").exists()
    finally:
        launcher.close()
    assert launcher.pid is None
    assert not (tmp_path / "IMPORTED").exists()


def test_a_launcher_holding_app_modules_refuses_to_start() -> None:
    code = (
        "import sys, types\n"
        "sys.modules['medalloc_core'] = types.ModuleType('medalloc_core')\n"
        "from medalloc.node import warm\n"
        "warm.PRELOAD = ()\n"
        "import os; r, w = os.pipe()\n"
        "sys.exit(warm.serve(w))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 1
    assert "app modules imported in the launcher (medalloc_core)" in result.stderr


def test_capped_clock_shortens_only_the_longer_waits() -> None:
    waits: list[float] = []
    clock = CappedClock(0.5, sleep=waits.append)
    clock.sleep(3)
    clock.sleep(0.2)
    assert waits == [0.5, 0.2]
    assert clock.monotonic() > 0  # everything else is the time module's
    with pytest.raises(ValueError, match="positive"):
        CappedClock(0)


def test_the_supernode_patch_finds_flowers_fixed_wait() -> None:
    code = (
        "from medalloc.node.supernode import CappedClock, shorten_poll\n"
        "from flwr.supernode import start_client_internal as node\n"
        "assert shorten_poll(0.25)\n"
        "assert isinstance(node.time, CappedClock) and node.time.cap == 0.25\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_node_start_runs_flowers_supernode_through_the_patch_and_the_gate_warm() -> None:
    argv = supernode_argv(["--insecure", "--superlink", "h:9092"], node_config="n.toml", port=9094, poll_interval=1.5)
    assert argv[:5] == [sys.executable, "-m", "medalloc.node.supernode", "--poll-interval", "1.5"]
    assert argv[5:] == ["--insecure", "--superlink", "h:9092", "--isolation", "process", "--port", "9094",
                        "--node-config", "n.toml"]  # fmt: skip
    assert gate_argv(node_config="n.toml", port=9094, parent_pid=1)[-1] == "--warm"
    assert gate_argv(node_config="n.toml", port=9094, parent_pid=1, warm=False)[-1] == "--no-warm"
    with pytest.raises(ValueError, match="--isolation is set by medalloc node start"):
        supernode_argv(["--isolation", "subprocess"], node_config="n.toml", port=9094)


@pytest.mark.parametrize("module", ["medalloc.node.supernode", "medalloc.server.grid_io"])
def test_an_object_uploaded_late_is_pulled_within_half_a_second_not_flowers_backoff(module: str) -> None:
    # Flower's own pull: an object not yet uploaded is tried again after 1 s, 2 s, 4 s ... (capped at 10 s).
    # After the patch (the node's processes, the ServerApp's) after 0.1 s doubling to 0.5 s, as patient in total.
    code = (
        "import time\n"
        "from flwr.supercore.inflatable import inflatable_utils as u\n"
        "tries = u.pull_objects.__kwdefaults__['max_tries_per_object']\n"
        "def pull_after(ready_s):\n"
        "    began, calls = time.monotonic(), []\n"
        "    def pull(object_id):\n"
        "        calls.append(time.monotonic() - began)\n"
        "        if calls[-1] < ready_s:\n"
        "            raise u.ObjectUnavailableError(object_id)\n"
        "        return b'content'\n"
        "    assert u.pull_objects(['a'], pull) == {'a': b'content'}\n"
        "    return calls\n"
        "before = pull_after(0.3)\n"
        "assert before[-1] >= 0.8, before  # Flower's first wait: 1 s (+-20 %)\n"
        f"from {module} import shorten_pull_backoff\n"
        "assert shorten_pull_backoff()\n"
        "after = pull_after(1.5)\n"
        "assert after[1] < 0.3 and after[-1] - 1.5 < 0.65, after  # at most 0.5 s (+20 %) after it was there\n"
        "d = u.pull_objects.__kwdefaults__\n"
        "assert (d['initial_backoff'], d['backoff_cap']) == (0.1, 0.5)\n"
        "assert d['max_tries_per_object'] * 0.5 >= tries * 10  # as patient as Flower in total\n"
    )
    if module.endswith("supernode"):  # the ClientApp's pull from its SuperNode goes through this one
        code += "assert u.pull_and_inflate_object_from_tree.__kwdefaults__['backoff_cap'] == 0.5\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_a_child_keeps_the_apps_byte_code_in_the_nodes_private_folder_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    warm._cache_byte_code()
    folder = tmp_path / "flwr" / warm.BYTE_CODE_DIR
    assert sys.pycache_prefix == str(folder) and not sys.dont_write_bytecode
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700

    # an app module imported now is cached there, never beside its source
    app = tmp_path / "app"
    (app / "probe_pkg").mkdir(parents=True)
    (app / "probe_pkg" / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(app))
    import probe_pkg  # noqa: F401

    monkeypatch.delitem(sys.modules, "probe_pkg")

    assert not (app / "probe_pkg" / "__pycache__").exists()
    assert list(folder.rglob("__init__*.pyc"))

    folder.chmod(0o777)  # a folder others may write: not trusted, nothing cached, nothing read beside the sources
    monkeypatch.setattr(sys, "pycache_prefix", None)
    warm._cache_byte_code()
    assert sys.dont_write_bytecode and sys.pycache_prefix != str(folder)
    assert not (app / "probe_pkg" / "__pycache__").exists()
