"""Generators for the equipment task's commands: ``maintenance-plan``, ``generate --task equipment``, and
``simulate`` scenarios whose ``[task]`` is equipment (or names a task that does not exist).

The valid inputs are one small generated fleet (the malformed-file campaign's equipment base,
:func:`fuzz.equipment.equipment_bases`) and an untrained risk model for it; each case
breaks one argument, one model-file field or one fleet file. ``maintenance-plan`` must refuse
every case before it writes its plan (CSV) or figure.
"""

from __future__ import annotations

import json
import random
import tempfile
from functools import cache
from pathlib import Path

from .gen_forecast import resign
from .gen_simulate import SCENARIO, default_text, drop_section, set_key
from .registry import Case, argv, generator, pick

MODEL = "risk_model.safetensors"
SIDECAR = "risk_model.json"
FLEET = "fleet"
_SERVICE = "--default-service-hours"


@cache
def risk_model_files() -> dict[str, bytes]:
    """``risk_model.safetensors`` and ``risk_model.json``: an untrained logistic risk model (default snapshots)."""
    from medalloc_core.equipment.features import SnapshotSpec
    from medalloc_core.equipment.model import RiskModelConfig, build_risk_model, save_risk_model

    spec = SnapshotSpec()
    model = build_risk_model(RiskModelConfig(n_features=spec.n_features), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = save_risk_model(Path(tmp) / MODEL, model, spec=spec)
        return {MODEL: (Path(tmp) / MODEL).read_bytes(), SIDECAR: sidecar.read_bytes()}


def fleet_files() -> dict[str, bytes]:
    """``fleet/devices.csv`` and ``fleet/events.csv``: the campaign's small generated fleet."""
    from medalloc_core.equipment import contract as ec

    from .equipment import equipment_bases

    bases = equipment_bases()
    return {
        f"{FLEET}/{ec.INVENTORY_STEM}.csv": bases["inventory"].csv,
        f"{FLEET}/{ec.EVENTS_STEM}.csv": bases["events"].csv,
    }


def _files(**replace: bytes) -> dict[str, bytes]:
    files = {**risk_model_files(), **fleet_files()}
    files.update({name.replace("__", "."): data for name, data in replace.items()})
    return files


def _plan_args(changes: dict[str, str | None] | None = None) -> tuple[str, ...]:
    """The valid arguments with ``changes`` applied (an option set to None is left out)."""
    options: dict[str, str | None] = {
        "--model": MODEL,
        "--fleet": FLEET,
        "--hours": "20",
        _SERVICE: "1",
        "--out": "plan.csv",
    }
    options.update(changes or {})
    return argv({k: v for k, v in options.items() if v is not None})


@generator("maintenance-plan", "args")
def _plan_options(rng: random.Random) -> Case:
    """Hours, shares, per-type hours, objective and date the planner cannot use."""
    option, values, named = rng.choice(
        [
            ("--hours", ("nan", "inf", "-inf", "-1", "1e309", "abc", ""), "--hours"),
            ("--max-share-away", ("nan", "0", "-0.5", "1.5", "inf", "abc"), "--max-share-away"),
            (_SERVICE, ("nan", "inf", "0", "-1", "1e309"), "service hours"),
            (
                "--service-hours",
                ("ventilator", "=3", "ventilator=x", "ventilator=3;pump=1", "a=1=2"),
                "--service-hours",
            ),
            ("--objective", ("cost", "", "FAILURES", "downtime "), "objective"),
            ("--date", ("yesterday", "2023-02-30", "1900-01-01", "9999-12-31", ""), "--date"),
        ]
    )
    value = pick(rng, values)
    changes: dict[str, str | None] = {option: value}
    if option == "--service-hours":
        changes[_SERVICE] = None  # the per-type text is what the planner must read
    return Case("maintenance-plan", _plan_args(changes), _files(), (named,), f"{option} {value!r}")


@generator("maintenance-plan", "service-hours-file")
def _plan_hours_file(rng: random.Random) -> Case:
    """A per-type hours table with a missing column, a non-number, an empty type, or bytes that are not a table."""
    name = "hours.csv"
    data, named = rng.choice(
        [
            (b"type,hours\nventilator,3\n", "service_hours"),
            (b"device_type,service_hours\nventilator,three\n", "row 2"),
            (b"device_type,service_hours\n,3\n", "device_type"),
            (b"device_type,service_hours\nventilator,nan\n", "service hours"),
            (b"device_type,service_hours\nventilator,-2\n", "service hours"),
            (b"\x00\xff\xfe garbage", name),
            (b"", name),
        ]
    )
    args = (*_plan_args({_SERVICE: None}), "--service-hours-file", name)
    return Case("maintenance-plan", args, _files(**{name.replace(".", "__"): data}), (named,), f"{data[:40]!r}")


@generator("maintenance-plan", "model")
def _plan_model(rng: random.Random) -> Case:
    """A risk model that is another task's, edited without its digest, re-signed too large, or torn."""
    from . import fixtures

    meta = json.loads(risk_model_files()[SIDECAR])
    kind = rng.randrange(6)
    if kind == 0:  # a demand forecaster where a risk model belongs
        files = {**fleet_files(), **fixtures.model_files()}
        args = _plan_args({"--model": "final_model.safetensors"})
        return Case("maintenance-plan", args, files, ("final_model.json", "forecasting"), "a forecaster")
    if kind == 1:
        current = meta["model-config"]["hidden"]  # an edit that changes nothing would be valid by accident
        meta["model-config"]["hidden"] = rng.choice([v for v in (8, 16, 0, 1) if v != current])
        data = json.dumps(meta, indent=2, sort_keys=True).encode()
        return Case("maintenance-plan", _plan_args(), _files(risk_model__json=data), (SIDECAR, "digest"), "unsigned")
    if kind == 2:
        field, value, named = rng.choice(
            [
                ("hidden", 10**9, "MAX_MODEL_PARAMETERS"),
                ("hidden", 1.5, "hidden"),
                ("hidden", "8", "hidden"),
                ("layers", 10**6, "layers"),
                ("n_features", 0, "n_features"),
                ("n_features", True, "n_features"),
                ("prior", 1.0, "prior"),
                ("prior", "x", "prior"),
            ]
        )
        meta["model-config"][field] = value
        files = _files(risk_model__json=resign(meta))
        return Case("maintenance-plan", _plan_args(), files, (SIDECAR, named), f"re-signed {field}={value!r}")
    if kind == 3:
        key, value = rng.choice(
            [("type_buckets", 10**7), ("type_buckets", 0), ("horizon_days", "30"), ("test_days", 10**9)]
        )
        meta["window-spec"][key] = value
        files = _files(risk_model__json=resign(meta))
        return Case("maintenance-plan", _plan_args(), files, (SIDECAR, key), f"re-signed spec {key}={value!r}")
    if kind == 4:  # the arrays swapped for other bytes, the sidecar re-signed for them
        arrays = risk_model_files()[MODEL]
        torn = arrays[: rng.randrange(8, len(arrays) - 1)]
        files = _files(risk_model__safetensors=torn, risk_model__json=resign(meta, torn))
        return Case("maintenance-plan", _plan_args(), files, (MODEL,), f"arrays cut to {len(torn)} bytes")
    files = _files(risk_model__json=b"{" * rng.choice([1, 100_000]))
    return Case("maintenance-plan", _plan_args(), files, (SIDECAR,), "sidecar not JSON")


@generator("maintenance-plan", "fleet")
def _plan_fleet(rng: random.Random) -> Case:
    """A fleet folder that is missing, lacks a file, or holds a file that breaks the contract."""
    from medalloc_core.equipment import contract as ec

    files = _files()
    devices, events = f"{FLEET}/{ec.INVENTORY_STEM}.csv", f"{FLEET}/{ec.EVENTS_STEM}.csv"
    kind = rng.randrange(4)
    if kind == 0:
        return Case("maintenance-plan", _plan_args({"--fleet": "nowhere"}), files, ("nowhere",), "no fleet folder")
    if kind == 1:
        gone = rng.choice([devices, events])
        del files[gone]
        return Case("maintenance-plan", _plan_args(), files, (FLEET,), f"{gone} missing")
    if kind == 2:  # a required inventory cell emptied or made unreadable
        lines = files[devices].decode().splitlines()
        header = lines[0].split(",")
        row = rng.randrange(1, len(lines))
        column, value = rng.choice(
            [(ec.DEVICE_ID, ""), (ec.DEVICE_TYPE, ""), (ec.INSTALL_DATE, ""), (ec.INSTALL_DATE, "not-a-date")]
        )
        cells = lines[row].split(",")
        cells[header.index(column)] = value
        lines[row] = ",".join(cells)
        files[devices] = ("\n".join(lines) + "\n").encode()
        return Case("maintenance-plan", _plan_args(), files, (ec.INVENTORY_STEM,), f"devices row {row + 1} {column}")
    files[events] = pick(rng, ("", "a,b\n1,2\n", "device_id\n")).encode()
    return Case("maintenance-plan", _plan_args(), files, (ec.EVENTS_STEM,), "events replaced")


@generator("generate", "equipment")
def _generate_equipment(rng: random.Random) -> Case:
    """``generate --task equipment`` (or an unknown --task) with an argument a fleet cannot have."""
    option, values, named = rng.choice(
        [
            ("--task", ("weather", "", "Equipment"), "--task"),
            ("--hospitals", ("0", "-3", "1001", "100000000"), "hospitals"),
            ("--days", ("0", "59", "18263", "100000000"), "days"),
            ("--start", ("9999-12-01", "0001-01-01", "2023-02-30", "1679-06-01"), "start"),
            ("--format", ("xlsx", "", "sqlite", "ndjson"), "--format"),
            ("--shape", ("omop", "fhir", "encounters", "mixed"), "--shape"),
        ]
    )
    value = pick(rng, values)
    options: dict[str, str | None] = {"--task": "equipment", "--hospitals": "1", "--days": "60", "--out": "fleets"}
    options[option] = value
    return Case("generate", argv(options), expect=(named,), detail=f"--task equipment {option} {value!r}")


def _equipment_text() -> str:
    """The default scenario turned into an equipment one ([task] name, a small region, no forecasting keys)."""
    text = default_text()
    for section in ("region", "comparisons", "evaluation"):
        text = drop_section(text, section)
    text = set_key(text, "task", "name", '"equipment"')
    for key, value in (("hospitals", "2"), ("days", "400"), ("device-scale", "0.3")):
        text = set_key(text, "region", key, value)
    return text


# (section, key, values an equipment scenario may not hold, what the error must name)
_EQUIPMENT_KEYS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("task", "name", ('"weather"', '""', "3", '"Equipment"'), "task"),
    ("task", "kind", ('"x"',), "kind"),
    ("region", "hospitals", ("0", "1001", "1.5", '"2"', "true"), "hospitals"),
    ("region", "days", ("0", "59", "100000000"), "days"),
    ("region", "device-scale", ("nan", "inf", "0", "-1", "1e9", '"x"'), "device_scale"),
    ("region", "warmup-days", ("-1", "100000000", "1.5"), "warmup_days"),
    ("region", "start", ('"9999-12-01"', '"2023-02-30"', "5"), "start"),
    ("region", "types", ('["toaster"]', "[]", '"ventilator"', "[1]"), "types"),
    ("region", "no-such-field", ("1",), "no_such_field"),
    ("comparisons", "plan-weeks", ("-1", "1.5", '"2"'), "plan-weeks"),
    ("comparisons", "hours-share", ("0", "2", "nan", "true"), "hours-share"),
    ("comparisons", "baselines", ('["seasonal_naive"]',), "baselines"),
    ("equipment", "no-such-key", ("1",), "equipment.no-such-key"),
    ("privacy", "epsilon", ("nan", "0", "-1", "inf", '"10"'), "epsilon"),
)


@generator("simulate", "equipment")
def _simulate_equipment(rng: random.Random) -> Case:
    """An equipment scenario with one key it cannot hold, or a forecasting scenario carrying [equipment] keys."""
    if rng.random() < 0.15:
        text = set_key(default_text(), "equipment", rng.choice(["hidden", "horizon-days"]), "1")
        return Case(
            "simulate",
            ("--config", SCENARIO, "--out", "results"),
            {SCENARIO: text.encode()},
            (
                SCENARIO,
                "[equipment]",
            ),
            "[equipment] keys in a forecasting scenario",
        )
    section, key, values, named = rng.choice(_EQUIPMENT_KEYS)
    value = rng.choice(values)
    text = set_key(_equipment_text(), section, key, value)
    files = {SCENARIO: text.encode()}
    return Case("simulate", ("--config", SCENARIO, "--out", "results"), files, (SCENARIO, named), f"[{section}] {key}")
