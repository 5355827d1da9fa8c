"""The layers hold: the import graph of the source tree, read from the code itself (AST), obeys the architecture.

medalloc_core (the library) imports no Flower and nothing above it; client/ and server/ (the
two Flower apps) import each other never and the simulations/CLI never; simulations/ sits
above both apps; the CLI (medalloc/cli) is on top. Inside client/, server/ and simulations/
their own modules are imported relatively, because Flower loads the apps from the FAB as
top-level ``client.app`` / ``server.app`` while the installed package names them
``medalloc.client`` / ``medalloc.server``. Inside medalloc_core the layers are ordered too
(``CORE_LAYERS``: base < privacy < data < domain < formats < equipment < tasks < report).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Source folder -> the dotted names it is known by once installed.
PACKAGES = {
    "medalloc_core": "medalloc_core",
    "client": "medalloc.client",
    "server": "medalloc.server",
    "simulations": "medalloc.simulations",
    "medalloc": "medalloc",
}
# What each layer must never import (prefix match on the absolute module name).
FORBIDDEN = {
    "medalloc_core": ("flwr", "medalloc", "client", "server", "simulations", "ray"),
    "client": ("medalloc.server", "medalloc.simulations", "medalloc.cli", "server", "simulations", "client"),
    "server": ("medalloc.client", "medalloc.simulations", "medalloc.cli", "client", "simulations", "server"),
    "simulations": ("medalloc.cli", "client", "server", "simulations"),
    "medalloc": ("client", "server", "simulations"),
}


def _modules(folder: str) -> list[Path]:
    root = REPO / folder
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``, relative ones resolved by installed names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    folder = REPO / path.relative_to(REPO).parts[0]
    here = PACKAGES[folder.name].split(".") + list(path.relative_to(folder).parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _violations(folder: str) -> list[str]:
    out = []
    for path in _modules(folder):
        for line, name in imports_of(path):
            for banned in FORBIDDEN[folder]:
                if name == banned or name.startswith(banned + "."):
                    if folder in ("client", "server", "simulations") and name.startswith(PACKAGES[folder]):
                        continue  # a relative import resolved to its own package
                    out.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return out


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layer_imports_nothing_it_must_not(folder: str) -> None:
    assert _violations(folder) == []


# What simulations/ may take from the two apps: only what it needs to RUN them (the ClientApp and
# ServerApp, their handlers and round loop, the run config they read, the deployment pieces a
# benchmark starts). Everything else a simulation uses (task code, region files, plots, reports)
# comes from medalloc_core, which the apps import too: the apps are not facades for the simulations.
SIMULATIONS_MAY_IMPORT_FROM_APPS = {
    "medalloc.client.app": {"make_client_app", "handle_train", "handle_evaluate", "refusal"},
    "medalloc.server.app": {"make_server_app", "run_federation"},
    "medalloc.server.secure": {"run_secure_federation"},  # the round loop of a secure-aggregation run
    "medalloc.server.config": {"RunConfig", "RunConfigError"},
    "medalloc.server.certs": {"write_certificates"},  # the boundary benchmark starts a real SuperLink and gateway
    "medalloc.server.gateway": {"GatewayError", "find_nginx"},
}


def _app_imports_of_simulations() -> list[str]:
    out = []
    for path in _modules("simulations"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [(a.name, "") for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in names:
                if module.split(".")[:2] in (["medalloc", "client"], ["medalloc", "server"]):
                    if name not in SIMULATIONS_MAY_IMPORT_FROM_APPS.get(module, set()):
                        out.append(
                            f"{path.relative_to(REPO)}:{node.lineno} imports {module}{':' + name if name else ''}"
                        )
    return out


def test_simulations_import_the_core_not_the_apps() -> None:
    assert _app_imports_of_simulations() == []


def test_the_app_import_check_sees_a_violation() -> None:
    probe = REPO / "simulations" / "_layer_probe_tmp.py"
    try:
        probe.write_text("from medalloc.client.config import NodeConfig\nimport medalloc.server.app\n")
        assert sorted(v.split(" imports ")[1] for v in _app_imports_of_simulations()) == [
            "medalloc.client.config:NodeConfig",
            "medalloc.server.app",
        ]
    finally:
        probe.unlink(missing_ok=True)


def test_the_check_sees_a_violation() -> None:
    # The checker itself must be able to fail: a core module importing flwr and a client module
    # importing the server are both reported.
    bad_core = REPO / "medalloc_core" / "_layer_probe_tmp.py"
    bad_client = REPO / "client" / "_layer_probe_tmp.py"
    try:
        bad_core.write_text("import flwr.app\nfrom medalloc.simulations import runner\n")
        bad_client.write_text("from medalloc.server.app import run_federation\nfrom client.task import x\n")
        assert [v.split(" imports ")[1] for v in _violations("medalloc_core")] == ["flwr.app", "medalloc.simulations"]
        assert [v.split(" imports ")[1] for v in _violations("client")] == ["medalloc.server.app", "client.task"]
    finally:
        bad_core.unlink(missing_ok=True)
        bad_client.unlink(missing_ok=True)


# Inside the library, lowest first: a module imports its own layer and the layers below it,
# never one above (checked on every import, function-local ones included). The privacy layer
# sits under the data and the domain: it knows counts and ledgers, not forecasters (the
# window-level DP-SGD audit, which trains one, is medalloc_core.forecast.audit). model_io and
# protocol still carry forecasting's ForecasterConfig and WindowSpec (the forecaster's model
# files and the forecasting instructions), so they sit above forecast, and equipment, which
# stores its models through model_io, above them.
CORE_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("atomic", "contract", "display", "encounters", "io", "paths", "rounds", "validation")),
    ("privacy", ("privacy",)),
    ("data", ("sources", "synthetic")),
    ("domain", ("allocation", "forecast")),
    ("formats", ("model_io", "protocol", "wire")),
    ("equipment", ("equipment",)),
    # simulation.py (the simulation-* keys, typed once) and simulation_plots.py serve the tasks'
    # simulated runs and reports; tasks/ reads them and simulation.py looks tasks up by name.
    # replies.py checks every node reply against its task's allow-list (issue 20): it looks tasks up.
    ("tasks", ("replies", "simulation", "simulation_plots", "tasks")),
    ("report", ("report",)),
)
_CORE_RANK = {name: rank for rank, (_, names) in enumerate(CORE_LAYERS) for name in names}


def _core_part(module: str) -> str | None:
    """``medalloc_core.forecast.training`` -> ``forecast``; None outside the library or for its root."""
    parts = module.split(".")
    return parts[1] if parts[0] == "medalloc_core" and len(parts) > 1 else None


def _core_order_violations() -> list[str]:
    out = []
    for path in _modules("medalloc_core"):
        own = _core_part(_module_name(path))
        if own is None:
            continue
        for line, name in imports_of(path):
            target = _core_part(name)
            if target is not None and target in _CORE_RANK and _CORE_RANK[target] > _CORE_RANK[own]:
                out.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {name} ({target}, a layer above)")
    return out


def test_every_part_of_the_library_has_a_layer() -> None:
    parts = {
        p.stem if p.is_file() else p.name
        for p in (REPO / "medalloc_core").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert parts == set(_CORE_RANK)


def test_the_library_layers_import_only_downwards() -> None:
    assert _core_order_violations() == []


def test_the_library_order_check_sees_a_violation() -> None:
    # A privacy module importing training (what the audit once did) and a domain module importing
    # a task are both reported; an import downwards is not.
    probes = {
        REPO / "medalloc_core" / "privacy" / "_layer_probe_tmp.py": "from medalloc_core.forecast.training import x\n",
        REPO / "medalloc_core" / "forecast" / "_layer_probe_tmp.py": (
            "from medalloc_core.privacy.ledger import x\nfrom ..tasks.base import y\n"
        ),
    }
    try:
        for path, text in probes.items():
            path.write_text(text)
        found = [v for v in _core_order_violations() if "_layer_probe_tmp" in v]
        assert [v.split(" imports ")[1].split(" ")[0] for v in sorted(found)] == [
            "medalloc_core.tasks.base",
            "medalloc_core.forecast.training",
        ]
    finally:
        for path in probes:
            path.unlink(missing_ok=True)


def test_relative_imports_resolve_inside_their_package() -> None:
    names = {name for _, name in imports_of(REPO / "client" / "app.py")}
    assert "medalloc.client.config" in names
    names = {name for _, name in imports_of(REPO / "simulations" / "runner.py")}
    assert "medalloc.simulations.scenario" in names


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_graph(folder: str) -> dict[str, set[str]]:
    """Module -> the modules of ``folder`` it imports at module level (function-local imports excluded)."""
    modules = {_module_name(p): p for p in _modules(folder)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_library_has_no_import_cycles() -> None:
    graph = _top_level_graph("medalloc_core")
    # Package __init__ modules re-export their children; a child importing its own package's
    # __init__ is Python's normal package import, not a design cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # the check can fail
