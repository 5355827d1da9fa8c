"""The approved-app gate checks Flower's installed copy against the approved FAB before every run (issue 22).

Flower reuses ``$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash[:8]>`` when it exists, without
looking inside; here the app is installed with Flower's own installer, then changed, and
``medalloc.node.installed.check_installed`` (what the gate calls before each launch) must refuse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medalloc.cli import app as cli
from medalloc.node.approved import fab_of_app, sha256
from medalloc.node.installed import check_installed, installed_folders, manifest_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fab() -> bytes:
    return fab_of_app(REPO)[0]


def _install(fab: bytes, home: Path) -> Path:
    from flwr.cli.install import install_from_fab

    return Path(install_from_fab(fab, install_dir=home, skip_prompt=True))


def _approve(tmp_path: Path, fab: bytes) -> Path:
    approved = tmp_path / "approved-apps.toml"
    (tmp_path / "app.fab").write_bytes(fab)
    result = CliRunner().invoke(
        cli, ["node", "approve", "--approved-apps", str(approved), "--fab", str(tmp_path / "app.fab")]
    )
    assert result.exit_code == 0, result.output
    assert manifest_path(approved, sha256(fab)).is_file()
    return approved


def test_an_intact_install_passes_and_a_changed_one_is_refused(tmp_path: Path, fab: bytes) -> None:
    approved, home = _approve(tmp_path, fab), tmp_path / "flwr"
    digest = sha256(fab)
    assert check_installed(digest, approved, home) is None  # nothing installed yet: Flower installs the FAB
    folder = _install(fab, home)
    assert installed_folders(digest, home) == [folder]
    (folder / "client" / "__pycache__").mkdir(exist_ok=True)
    (folder / "client" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"cache")  # Python's own cache
    (folder / "server" / "strategies.pyc").write_bytes(b"cache")
    assert check_installed(digest, approved, home) is None
    # ... removed before the run: Python would run a planted cache instead of the checked source
    assert not (folder / "client" / "__pycache__").exists() and not (folder / "server" / "strategies.pyc").exists()
    assert (folder / "client" / "app.py").is_file()

    target = folder / "client" / "app.py"
    original = target.read_bytes()
    target.write_bytes(original + b"\nimport os  # edited after approval\n")
    problem = check_installed(digest, approved, home)
    assert problem is not None and "client/app.py changed" in problem and str(folder) in problem
    target.write_bytes(original)
    (folder / "client" / "extra.py").write_text("print('not approved')\n")
    assert "client/extra.py added" in (check_installed(digest, approved, home) or "")
    (folder / "client" / "extra.py").unlink()
    (folder / "server" / "app.py").unlink()  # a torn install
    assert "server/app.py missing" in (check_installed(digest, approved, home) or "")


def test_a_folder_of_another_fab_with_the_same_8_digit_prefix_is_refused(tmp_path: Path, fab: bytes) -> None:
    """The folder name holds 32 bits of the hash; the manifest is keyed by all 256."""
    approved, home = _approve(tmp_path, fab), tmp_path / "flwr"
    folder = _install(fab, home)
    impostor = folder.with_name(folder.name.replace("0.1.0", "0.0.9"))
    folder.rename(impostor)
    (impostor / "client" / "app.py").write_text("# another app\n")
    assert "differs from the approved FAB" in (check_installed(sha256(fab), approved, home) or "")


def test_an_app_approved_by_hash_alone_is_reinstalled_fresh(tmp_path: Path, fab: bytes) -> None:
    approved, home = tmp_path / "approved-apps.toml", tmp_path / "flwr"
    result = CliRunner().invoke(cli, ["node", "approve", "--approved-apps", str(approved), "--sha256", sha256(fab)])
    assert result.exit_code == 0, result.output
    folder = _install(fab, home)
    (folder / "client" / "app.py").write_text("# edited\n")
    assert check_installed(sha256(fab), approved, home) is None
    assert not folder.exists()  # removed: Flower installs the verified FAB again


def test_a_planted_byte_code_cache_never_runs_in_place_of_the_checked_source(tmp_path: Path, fab: bytes) -> None:
    """A ``.pyc`` whose header names the source's time and size is what Python runs, whatever the source says."""
    import importlib.util
    import py_compile

    approved, home = _approve(tmp_path, fab), tmp_path / "flwr"
    folder = _install(fab, home)
    source = folder / "client" / "config.py"
    fake = tmp_path / "fake" / "config.py"
    fake.parent.mkdir()
    fake.write_text("PLANTED = True\n" + "#" * (source.stat().st_size - len("PLANTED = True\n") - 1) + "\n")
    assert fake.stat().st_size == source.stat().st_size
    os.utime(fake, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns))
    cached = importlib.util.cache_from_source(str(source))
    py_compile.compile(str(fake), cfile=cached, doraise=True)  # what Python would run for client/config.py

    probe = f"import sys; sys.path.insert(0, {str(folder)!r}); import client.config as c; print(hasattr(c, 'PLANTED'))"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert ran.stdout.strip() == "True"  # the hole: the planted cache ran, the checked source did not

    assert check_installed(sha256(fab), approved, home) is None
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert ran.stdout.strip() == "False"
