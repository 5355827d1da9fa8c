"""The `medalloc` command starts light, and a command whose optional extra is missing says which, in one line.

Startup: `medalloc --help` lists every command without importing any command's module, so
torch, Flower, Opacus and pandas are not loaded (the time itself is measured by
`python -m simulations.benchmarks.deployment`, not asserted here).

Missing extras are simulated in a real subprocess: a ``sitecustomize`` on PYTHONPATH installs a
meta-path finder that refuses the extra's modules, exactly as if they were not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest

from medalloc.cli import COMMANDS, EXTRA_OF_MODULE, load_command, missing_extra

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "flwr", "opacus", "pandas", "numpy", "matplotlib", "scipy")


def test_every_command_is_listed_with_its_own_one_line_help() -> None:
    for name, (_, short) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        own = (command.help or "").strip().split("\n\n")[0].replace("\n", " ").strip()
        assert own == short, f"medalloc.cli.COMMANDS[{name!r}] says {short!r}, the command says {own!r}"


def _loaded_after(argv: list[str]) -> list[str]:
    code = textwrap.dedent(
        f"""
        import sys
        from medalloc.cli import main
        sys.argv = {["medalloc", *argv]!r}
        try:
            main()
        except SystemExit:
            pass
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_help_imports_neither_torch_nor_flower_nor_pandas() -> None:
    assert _loaded_after(["--help"]) == []
    # a command's own help loads only what that command's module needs: node needs no torch
    assert "torch" not in _loaded_after(["gateway", "--help"])


def test_an_unknown_command_still_fails_as_click_does() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "nosuch"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 2 and "No such command" in out.stderr


# ---------------------------------------------------------------- missing extras


def test_missing_extra_reads_the_cause_chain() -> None:
    try:
        try:
            raise ModuleNotFoundError("No module named 'captum'", name="captum")
        except ModuleNotFoundError as exc:
            raise RuntimeError("attributions failed") from exc
    except RuntimeError as outer:
        assert missing_extra(outer) == ("explain", "captum")
    assert missing_extra(ModuleNotFoundError("x", name="yaml")) is None
    assert set(EXTRA_OF_MODULE.values()) == {"explain", "fhir", "omop", "rl", "zeroshot"}


def _without(blocked: str, tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import ``blocked`` (nor its submodules)."""
    site = tmp_path / f"block-{blocked}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import sys

            class _Blocker:
                def find_spec(self, name, path=None, target=None):
                    if name == {blocked!r} or name.startswith({blocked + "."!r}):
                        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                    return None

            sys.meta_path.insert(0, _Blocker())
            """
        ),
        encoding="utf-8",
    )
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}


def _medalloc(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medalloc.cli", *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def hospital_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from medalloc_core.forecast.features import WindowSpec, prepare_hospital
    from medalloc_core.forecast.models import ForecasterConfig, build_model
    from medalloc_core.model_io import save_model
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region
    from medalloc_core.validation import load_unit_records

    folder = tmp_path_factory.mktemp("extras")
    config = RegionConfig(hospitals=1, days=120, seed=2, short_history_fraction=0.0, specialty_centres=0)
    data = next(p for p in write_region(generate_region(config), folder) if p.suffix == ".csv")
    dataset = prepare_hospital(
        load_unit_records(data), WindowSpec(history=14, horizon=7, val_periods=14, test_periods=14)
    )
    model = build_model(ForecasterConfig(history=14, horizon=7, n_features=dataset.n_features, n_targets=2, hidden=8))
    return data, save_model(folder / "model" / "final_model.safetensors", model, spec=dataset.spec)


def test_explain_without_captum_names_the_extra_in_one_line(
    hospital_and_model: tuple[Path, Path], tmp_path: Path
) -> None:
    data, model = hospital_and_model
    out = _medalloc(
        ["explain", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "x")],
        _without("captum", tmp_path),
        tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    # the data's own warnings may come first; the failure itself is one line
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1, out.stderr
    assert "'explain' extra" in lines[0] and "pip install -e '.[explain]'" in lines[0] and "captum" in lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    # and with captum the same command works (the blocker, not the data, made it fail)
    ok = _medalloc(
        ["explain", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "y")],
        {**_without("no_such_module_at_all", tmp_path)},
        tmp_path,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize(("shape", "blocked", "extra"), [("fhir", "fhir", "fhir"), ("omop", "sqlalchemy", "omop")])
def test_fhir_and_omop_sources_without_their_extra_say_which(
    shape: str, blocked: str, extra: str, tmp_path: Path
) -> None:
    env = _without("no_such_module_at_all", tmp_path)
    made = _medalloc(["generate", "--hospitals", "1", "--days", "60", "--shape", shape, "--out", "src"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    source = next(p for p in (tmp_path / "src").iterdir() if p.name.startswith("H000"))
    out = _medalloc(["validate", str(source)], _without(blocked, tmp_path), tmp_path)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text
    assert f"'{extra}' extra" in text and f"pip install -e '.[{extra}]'" in text and "Traceback" not in text, text


def test_click_is_what_the_stub_listing_uses() -> None:
    """The group's listing builds placeholder commands, never the real ones (nothing imported)."""
    from medalloc.cli import _LazyGroup

    group = _LazyGroup(name="medalloc")
    group._listing = True
    stub = group.get_command(click.Context(group), "simulate")
    assert stub is not None and stub.callback is None
