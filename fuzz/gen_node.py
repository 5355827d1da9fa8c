"""Generators for ``medalloc node approve|hash|check|exec|start``: the node's own files and options.

``node exec`` and ``node start`` launch long-running processes once their inputs pass: every case
here is refused before that (a valid-by-accident case would start a SuperNode and hang, which the
registry's deadline reports as a failure).
"""

from __future__ import annotations

import random

from . import fixtures
from .registry import Case, argv, generator

HEX = "ab" * 32  # a well-formed FAB hash
APPROVED = f'[[app]]\nsha256 = "{HEX}"\nname = "medalloc 0.1.0"\n'.encode()


def bad_approved(rng: random.Random) -> tuple[bytes, str]:
    """An approved-apps file no node may read as a list of approvals."""
    return rng.choice(
        [
            (b"[[app]\nsha256 = 1\n", "not TOML"),
            (b"\xff\xfe[[app]]", "not UTF-8"),
            (b'apps = "all"\n', "unknown key"),
            (b'app = "x"\n', "app not a list"),
            (b"[[app]]\nname = 'no hash'\n", "no sha256"),
            (b"[[app]]\nsha256 = 'abc'\n", "short sha256"),
            (f"[[app]]\nsha256 = '{HEX}'\nname = 3\n".encode(), "name not text"),
            (f"[[app]]\nsha256 = '{HEX}'\nrun = true\n".encode(), "unknown entry key"),
            (b"app = [1, 2]\n", "entries not tables"),
        ]
    )


@generator("node approve", "args")
def _approve_args(rng: random.Random) -> Case:
    kind = rng.randrange(6)
    base = {"--approved-apps": "approved.toml"}
    if kind == 0:
        return Case("node approve", argv(base), {}, ("exactly one",), "no app given")
    if kind == 1:
        return Case("node approve", argv({**base, "--sha256": HEX, "--fab": "x.fab"}), {"x.fab": b"PK"},
                    ("exactly one",), "two given")  # fmt: skip
    if kind == 2:
        value = rng.choice(["abc", HEX[:-1], "g" * 64, HEX + "0", ""])
        return Case("node approve", argv({**base, "--sha256": value}), {}, ("--sha256",), f"--sha256 {value!r}")
    if kind == 3:
        return Case("node approve", argv({**base, "--fab": "missing.fab"}), {}, ("missing.fab",), "no fab")
    if kind == 4:
        files = {"app/README.md": b"no pyproject here"}
        return Case("node approve", argv({**base, "--app": "app"}), files, ("--app app", "pyproject.toml"), "no app")
    data, detail = bad_approved(rng)
    files = {"approved.toml": data}
    return Case("node approve", argv({**base, "--sha256": HEX}), files, ("approved.toml",), f"file: {detail}")


@generator("node hash", "args")
def _hash_args(rng: random.Random) -> Case:
    target, files = rng.choice(
        [("missing", {}), ("app", {"app/x.py": b""}), ("file.txt", {"file.txt": b"x"})]
    )  # fmt: skip
    return Case("node hash", ("--app", target), files, (f"--app {target}", "pyproject.toml"), f"--app {target}")


def _node_files() -> dict[str, bytes]:
    return {"H000.csv": fixtures.hospital_csv(), "approved.toml": APPROVED}


@generator("node check", "config")
def _check_config(rng: random.Random) -> Case:
    """--node-config (file or key=value) that is unreadable or names a bad data file, checked --offline."""
    files = _node_files()
    kind = rng.randrange(6)
    if kind == 0:
        return Case("node check", ("--node-config", "missing.toml", "--offline"), files, ("missing.toml",), "no file")
    if kind == 1:
        files["node.toml"] = rng.choice([b"data-path = \n", b"[x\n", b"\xff\xfe"])
        return Case("node check", ("--node-config", "node.toml", "--offline"), files, ("node.toml",), "bad TOML")
    if kind == 2:
        config = 'ledger-path="ledger.json"'
        return Case("node check", ("--node-config", config, "--offline"), files, ("data-path",), "no data-path")
    if kind == 3:
        files["bad.csv"] = b"date,unit,census\n2024-01-01,icu,many\n"
        config = 'data-path="bad.csv" ledger-path="ledger.json" privacy-epsilon-budget=1.0'
        return Case("node check", ("--node-config", config, "--offline"), files, ("bad.csv",), "invalid data")
    if kind == 4:
        config = 'data-path="H000.csv" ledger-path="ledger.json" privacy-epsilon-budget=1.0'
        option, value = rng.choice([("--history", "0"), ("--horizon", "-1"), ("--targets", ",")])
        return Case("node check", ("--node-config", config, option, value, "--offline"), files,
                    ("--history/--horizon/--targets",), f"{option} {value}")  # fmt: skip
    # Flower's key=value reader is lenient: these read as other keys, and the missing one is named.
    config, named = rng.choice(
        [('data-path="H000.csv" ledger-path=', "ledger-path"), ("data-path H000.csv", "data-path"),
         ('a="1" "b', "data-path")]
    )  # fmt: skip
    return Case("node check", ("--node-config", config, "--offline"), files, (named,), f"syntax {config!r}")


@generator("node exec", "config")
def _exec_config(rng: random.Random) -> Case:
    return _gate_case("node exec", rng)


@generator("node start", "config")
def _start_config(rng: random.Random) -> Case:
    if rng.random() < 0.25:  # everything valid but the port: refused before the SuperNode starts
        port = rng.choice(["0", "70000", "-1"])
        config = 'approved-apps="approved.toml"'
        return Case("node start", ("--node-config", config, "--port", port), _node_files(), ("--port",), f"port {port}")
    return _gate_case("node start", rng)


def _gate_case(command: str, rng: random.Random) -> Case:
    """A node config without a readable approved-apps file: the gate must refuse before it starts anything."""
    files = _node_files()
    kind = rng.randrange(4)
    if kind == 0:
        config = 'data-path="H000.csv"'
        return Case(command, ("--node-config", config), files, ("approved-apps",), "no approved-apps key")
    if kind == 1:
        config = 'approved-apps="missing.toml"'
        return Case(command, ("--node-config", config), files, ("missing.toml",), "approved-apps missing")
    if kind == 2:
        data, detail = bad_approved(rng)
        files["approved.toml"] = data
        config = 'approved-apps="approved.toml"'
        return Case(command, ("--node-config", config), files, ("approved.toml",), f"approved-apps: {detail}")
    return Case(command, ("--node-config", "nope.toml"), files, ("nope.toml",), "config file missing")
