"""Generators for the commands that read a privacy ledger: ``privacy`` and ``share``."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
from collections.abc import Callable
from typing import Any

from . import fixtures
from .gen_args import NOT_POSITIVE
from .registry import Case, argv, generator, pick

Mutation = Callable[[dict[str, Any]], None]


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signed_ledger(mutate: Mutation | None = None, *, keep_key: bool = True) -> dict[str, bytes]:
    """The fixture ledger, its body changed by ``mutate`` and re-authenticated with its own key.

    Re-authenticating makes the bad values reach the parser behind the HMAC, as they would
    from a buggy writer on the node itself.
    """
    files = dict(fixtures.ledger_files())
    document = json.loads(files["ledger.json"])
    if mutate is not None:
        mutate(document["body"])
        key = bytes.fromhex(files["ledger.json.key"].decode().strip())
        document["body_hmac_sha256"] = hmac.new(key, _canonical(document["body"]), hashlib.sha256).hexdigest()
        files["ledger.json"] = json.dumps(document).encode()
    if not keep_key:
        del files["ledger.json.key"]
    return files


def _raw(data: bytes) -> dict[str, bytes]:
    return {"ledger.json": data, "ledger.json.key": fixtures.ledger_files()["ledger.json.key"]}


def _set_spend(name: str, value: object) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        next(iter(body["entries"].values()))[0][name] = value

    return mutate


def _set_body(name: str, value: object) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body[name] = value

    return mutate


def _del_body(name: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body.pop(name, None)

    return mutate


def _version_1(document: dict[str, Any]) -> bytes:
    body = document["body"]
    return json.dumps(
        {
            "format": document["format"],
            "version": 1,
            "body_sha256": hashlib.sha256(_canonical(body)).hexdigest(),
            "body": body,
        }
    ).encode()


def bad_ledger(rng: random.Random) -> tuple[dict[str, bytes], str]:
    """Ledger files (``ledger.json`` and usually its key) that no command may read as a ledger."""
    good = fixtures.ledger_files()["ledger.json"]
    kind = rng.randrange(12)
    if kind == 0:
        return _raw(b"[" * rng.choice([1000, 100_000])), "deep nesting"
    if kind == 1:
        return _raw(good[: rng.randrange(len(good))]), "truncated"
    if kind == 2:
        return _raw(rng.randbytes(rng.randrange(1, 2000))), "random bytes"
    if kind == 3:
        return signed_ledger(keep_key=False), "key missing"
    if kind == 4:  # an edit without the key (the recomputed-SHA-256 attack)
        document = json.loads(good)
        document["body"]["entries"] = {}
        document["body_hmac_sha256"] = hashlib.sha256(_canonical(document["body"])).hexdigest()
        return _raw(json.dumps(document).encode()), "edited, SHA-256 recomputed"
    if kind == 5:
        name = rng.choice(["noise_multiplier", "sample_rate", "steps"])
        value = rng.choice(
            {
                "noise_multiplier": [1e-300, 0, -1, 1e308, "x", None, True, 1e-3],
                "sample_rate": [0, -1, 1.5, 1e308, "x", None, True],
                "steps": [-1, 1.5, "x", None, True, 2**70, 10**10],
            }[name]
        )
        return signed_ledger(_set_spend(name, value)), f"spend {name}={value!r}"
    if kind == 6:
        name = rng.choice(["delta", "epsilon_budget", "accountant", "created", "entries", "budget_changes"])
        # Only values the field cannot hold ({} is an empty, valid entries table, [] a valid change list).
        invalid: list[object] = {
            "entries": [0, "x", None, [], 1.5],
            "budget_changes": [0, "x", None, {}, [1]],
            "created": [0, None, [], {}, 1.5],
            "epsilon_budget": [0, -1, "x", None, [], {}, True],
            "accountant": [0, "x", None, [], {}, True, "RDP"],
        }.get(name, [0, -1, 1e308, "x", None, [], {}, True])  # type: ignore[assignment]
        value = rng.choice(invalid)
        return signed_ledger(_set_body(name, value)), f"body {name}={value!r}"
    if kind == 7:
        return signed_ledger(_set_spend("run_id", rng.choice([7, None, [], {}]))), "run_id not a string"
    if kind == 8:
        name = rng.choice(["created", "accountant", "delta", "epsilon_budget", "entries"])
        return signed_ledger(_del_body(name)), f"body without {name}"
    if kind == 9:
        key = rng.choice([b"", b"zz\n", b"00" * 16 + b"\n", b"\xff" * 64])
        return {"ledger.json": good, "ledger.json.key": key}, f"key {key[:8]!r}"
    if kind == 10:
        document = json.loads(good)
        document["version"] = rng.choice([0, 3, "2", None, 2.5])
        return _raw(json.dumps(document).encode()), f"version {document['version']!r}"
    return _raw(_version_1(json.loads(good))), "version 1 (needs --upgrade)"


@generator("privacy", "ledger")
def _privacy_ledger(rng: random.Random) -> Case:
    files, detail = bad_ledger(rng)
    extra = ("--json",) if rng.random() < 0.3 else ()
    return Case("privacy", ("--ledger", "ledger.json", *extra), files, expect=("ledger.json",), detail=detail)


@generator("privacy", "path")
def _privacy_path(rng: random.Random) -> Case:
    target = rng.choice(["missing.json", "folder", "ledger.json/inner"])
    files = {"folder/x": b""} if target == "folder" else {}
    if target.startswith("ledger.json/"):
        files = dict(fixtures.ledger_files())
    return Case("privacy", ("--ledger", target), files, expect=(target,), detail=f"--ledger {target}")


@generator("privacy", "upgrade")
def _privacy_upgrade(rng: random.Random) -> Case:
    """``--upgrade`` on what is not an intact, unkeyed version-1 ledger."""
    good = json.loads(fixtures.ledger_files()["ledger.json"])
    kind = rng.randrange(4)
    if kind == 0:
        return Case("privacy", ("--ledger", "ledger.json", "--upgrade"), dict(fixtures.ledger_files()),
                    ("ledger.json", "version 2"), "already version 2")  # fmt: skip
    v1 = _version_1(good)
    if kind == 1:  # a v1 ledger beside a key: a keyed ledger replaced by an unkeyed one
        files = {"ledger.json": v1, "ledger.json.key": fixtures.ledger_files()["ledger.json.key"]}
        return Case("privacy", ("--ledger", "ledger.json", "--upgrade"), files, ("ledger.json",), "v1 beside a key")
    if kind == 2:  # an edited v1 ledger (its unkeyed checksum no longer holds)
        document = json.loads(v1)
        document["body"]["entries"] = {}
        files = {"ledger.json": json.dumps(document).encode()}
        return Case("privacy", ("--ledger", "ledger.json", "--upgrade"), files, ("ledger.json",), "edited v1")
    return Case("privacy", ("--ledger", "missing.json", "--upgrade"), {}, ("missing.json",), "no ledger")


# ---------------------------------------------------------------------------- share


def _share_files() -> dict[str, bytes]:
    return {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv(), **fixtures.ledger_files()}


_SHARE = {"--forecast": "forecast.csv", "--data": "H000.csv", "--ledger": "ledger.json", "--epsilon": "1.0"}


@generator("share", "args")
def _share_args(rng: random.Random) -> Case:
    option, values = rng.choice(
        [
            ("--epsilon", ("0", "-1", "nan", "inf", "710", "1e308", "100.5", "-inf")),
            ("--sensitivity", ("inf", "nan", "0", "-1", "-inf", "1e309")),
            ("--delta", ("0", "1", "nan", "-1", "2", "inf")),
            ("--epsilon-budget", NOT_POSITIVE),
        ]
    )
    value = pick(rng, values)
    options: dict[str, str | None] = {**_SHARE, "--out": "shared.csv", option: value}
    files = _share_files()
    if option == "--epsilon-budget":
        del files["ledger.json"], files["ledger.json.key"]  # the budget only matters for a new ledger
    return Case("share", argv(options), files, expect=(option,), detail=f"{option} {value}")


@generator("share", "ledger")
def _share_ledger(rng: random.Random) -> Case:
    files, detail = bad_ledger(rng)
    files |= {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv()}
    return Case("share", argv({**_SHARE, "--out": "shared.csv"}), files, ("ledger.json",), detail)


@generator("share", "forecast")
def _share_forecast(rng: random.Random) -> Case:
    data, detail, named = bad_forecast_csv(rng)
    files = _share_files() | {"forecast.csv": data}
    return Case("share", argv({**_SHARE, "--out": "shared.csv"}), files, ("forecast.csv", *named), detail)


@generator("share", "paths")
def _share_paths(rng: random.Random) -> Case:
    files = _share_files()
    kind = rng.randrange(5)
    if kind == 0:
        del files["H000.csv"]
        return Case("share", argv({**_SHARE, "--out": "s.csv"}), files, ("H000.csv",), "data missing")
    if kind == 1:
        files["out/x"] = b""
        return Case("share", argv({**_SHARE, "--out": "out"}), files, ("out",), "--out is a folder")
    if kind == 2:
        files["shared.csv"] = b"hospital,date,q,value\n"
        return Case("share", argv({**_SHARE, "--out": "shared.csv"}), files, ("shared.csv",), "--out exists")
    if kind == 3:
        return Case("share", argv({**_SHARE, "--out": "forecast.csv"}), files, ("forecast.csv",), "--out is an input")
    if rng.random() < 0.5:
        files["H000.csv"] = b"date,unit,census\n2024-01-01,icu,minus one\n"
        return Case("share", argv({**_SHARE, "--out": "s.csv"}), files, ("H000.csv", "census"), "data invalid")
    files["forecast.csv"] = fixtures.forecast_csv("H000") + fixtures.forecast_csv("H001").split(b"\n", 1)[1]
    return Case("share", argv({**_SHARE, "--out": "s.csv"}), files, ("forecast.csv", "2 hospitals"), "two hospitals")


# ---------------------------------------------------------------------------- bad forecast frames (shared)


def bad_forecast_csv(rng: random.Random, hospital: str = "H000") -> tuple[bytes, str, tuple[str, ...]]:
    """A forecast frame broken one way; returns (bytes, detail, what the error must name besides the file)."""
    frame = fixtures.forecast_frame(hospital)
    kind = rng.randrange(12)
    if kind == 0:
        return b"", "empty file", ()
    if kind == 1:
        column = rng.choice(list(frame.columns))
        return _csv(frame.drop(columns=[column])), f"no {column} column", (column,)
    row = rng.randrange(len(frame))
    if kind == 2:
        value = rng.choice(["nan", "inf", "-1", "1e309", "lots", "", "-inf"])
        frame.loc[row, "value"] = value
        return _csv(frame), f"value {value!r}", ("value",)
    if kind == 3:
        value = rng.choice(["0", "1", "1.5", "-0.1", "nan", "x", ""])
        frame.loc[row, "q"] = value
        return _csv(frame), f"q {value!r}", ("q",)
    if kind == 4:
        value = rng.choice(["2024-02-30", "yesterday", "", "99999-01-01", "0001-01-01x"])
        frame.loc[row, "date"] = value
        return _csv(frame), f"date {value!r}", ("date",)
    if kind == 5:
        value = rng.choice(["beds", "", "icu"])
        frame.loc[row, "target"] = value
        return _csv(frame), f"target {value!r}", ("target",)
    if kind == 6:
        return _csv(frame.iloc[[*range(len(frame)), row]]), "duplicate row", ("duplicate",)
    if kind == 7:  # a P90 below its own P10
        census = frame.index[frame["target"].eq("census") & frame["q"].astype(float).eq(0.9)]
        i = int(rng.choice(list(census)))
        frame.loc[i, "value"] = "0"
        frame.loc[i - 2, "value"] = "5"
        return _csv(frame), "crossing quantiles", ("cross",)
    if kind == 8:
        return rng.randbytes(rng.randrange(1, 400)) + b"\x00", "binary", ()
    if kind == 9:
        return b"\xff\xfe" + "hospital,unit".encode("utf-16-le"), "UTF-16", ()
    if kind == 10:
        return b"hospital,unit,date,target,q,value\n", "header only", ()
    data = _csv(frame)
    return data[: rng.randrange(40, len(data) // 2)].rsplit(b",", 1)[0], "truncated mid-row", ()


def _csv(frame: Any) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()
