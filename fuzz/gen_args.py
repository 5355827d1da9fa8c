"""Generators for commands whose inputs are arguments only: ``generate``, ``audit``, ``gateway config``."""

from __future__ import annotations

import random

from .registry import BAD_FLOATS, Case, argv, generator, pick


@generator("generate", "args")
def _generate_args(rng: random.Random) -> Case:
    option, values, named = rng.choice(
        [
            ("--hospitals", ("0", "-3", "100000000", "1001", "1.5", "x"), "hospitals"),
            ("--days", ("0", "27", "100000000", "-1", "x", "18263"), "days"),
            (
                "--start",
                ("9999-12-01", "0001-01-01", "2023-02-30", "yesterday", "", "1678-06-01", "2261-12-30"),
                "start",
            ),
            ("--shape", ("weekly", "", "DAILY"), "--shape"),
            ("--format", ("xlsx", "", "CSV"), "--format"),
            ("--seed", ("-1", "x", "1.5"), "seed"),
        ]
    )
    value = pick(rng, values)
    options: dict[str, str | None] = {"--hospitals": "2", "--days": "60", "--out": "region"}
    options[option] = value
    return Case("generate", argv(options), expect=(named,), detail=f"{option} {value!r}")


@generator("generate", "out")
def _generate_out(rng: random.Random) -> Case:
    """--out names a file, or a folder that already holds a region (without --force)."""
    if rng.random() < 0.5:
        files = {"region": b"not a folder\n"}
        return Case("generate", ("--hospitals", "1", "--days", "28", "--out", "region"), files, ("region",), "file")
    files = {"region/H000.csv": b"date,unit,census\n", "region/region.json": b"{}"}
    return Case("generate", ("--hospitals", "1", "--days", "28", "--out", "region"), files, ("region",), "exists")


@generator("audit", "args")
def _audit_args(rng: random.Random) -> Case:
    option = rng.choice(["--noise-multiplier", "--max-grad-norm"])
    value = pick(rng, ("nan", "inf", "-inf", "-1", "0", "1e309", "-0"))
    return Case("audit", ("--quick", "--out", "audit", option, value), expect=(option,), detail=f"{option} {value}")


@generator("gateway config", "args")
def _gateway_args(rng: random.Random) -> Case:
    """Addresses, ports and certificate folders the gateway must refuse before writing anything."""
    option, value, named = rng.choice(
        [
            ("--superlink", "10.0.0.5:9091", "loopback"),
            ("--superlink", "0.0.0.0:9091", "loopback"),
            ("--superlink", "example.org:9091", "loopback"),
            ("--listen", "9092", "--listen"),
            ("--listen", "0.0.0.0:0", "--listen"),
            ("--listen", "0.0.0.0:70000", "--listen"),
            ("--listen", "a;b:9092", "--listen"),
            ("--listen", "a b:9092", "--listen"),
            ("--listen", "0.0.0.0:9x", "--listen"),
            ("--superlink", ":9091", "--superlink"),
            ("--certs", "missing", "missing"),
            ("--certs", "empty", "empty"),
        ]
    )
    options: dict[str, str | None] = {
        "--listen": "127.0.0.1:19092",
        "--superlink": "127.0.0.1:19091",
        "--certs": "certs",
        "--dir": "gw",
    }
    options[option] = value
    files = {"certs/server.pem": b"x", "certs/server.key": b"x", "certs/ca.crt": b"x", "empty/.keep": b""}
    return Case("gateway config", argv(options), files, expect=(named,), detail=f"{option} {value!r}")


# Numbers a positive finite option must refuse; shared with other generator modules.
NOT_POSITIVE = tuple(v for v in BAD_FLOATS if v not in ("", "abc", "1e-320"))
