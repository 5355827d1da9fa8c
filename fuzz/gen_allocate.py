"""Generators for ``allocate`` (forecast, capacity, unit config, options) and ``allocate-region`` (shared tables)."""

from __future__ import annotations

import io
import random

import pyarrow as pa
import pyarrow.parquet as pq

from . import fixtures
from .gen_privacy import bad_forecast_csv
from .registry import Case, argv, generator, pick

_ALLOCATE = {"--forecast": "forecast.csv", "--capacity": "capacity.csv", "--out": "plan"}


def _allocate_files() -> dict[str, bytes]:
    return {
        "forecast.csv": fixtures.forecast_csv(),
        "capacity.csv": fixtures.capacity_csv(),
        "unit_config.csv": fixtures.unit_config_csv(),
        "H000.csv": fixtures.hospital_csv(),
    }


def _parquet(text: bytes) -> bytes:
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(text), dtype=str)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


@generator("allocate", "forecast")
def _allocate_forecast(rng: random.Random) -> Case:
    data, detail, named = bad_forecast_csv(rng)
    if rng.random() < 0.15 and data:  # the same breakage delivered as Parquet
        try:
            data, detail = _parquet(data), f"{detail} (Parquet)"
        except Exception:  # noqa: BLE001 - bytes pandas cannot even read stay CSV
            pass
    files = _allocate_files() | {"forecast.csv": data}
    return Case("allocate", argv(_ALLOCATE), files, ("forecast.csv", *named), detail)


@generator("allocate", "capacity")
def _allocate_capacity(rng: random.Random) -> Case:
    units = fixtures.units()
    kind = rng.randrange(9)
    value = pick(rng, ("1e30", "lots", "-3", "2.5", "nan", "inf", "", "1e7", "0x10"))
    rows = [f"{u},60,50" for u in units]
    named: tuple[str, ...] = ("beds",)
    if kind == 0:
        rows[rng.randrange(len(rows))] = f"{units[0]},{value},0"
        detail = f"beds {value!r}"
        if not value:
            named = ("beds", "empty")
    elif kind == 1:
        rows[rng.randrange(len(rows))] = f"{units[-1]},60,{value if value else 'x'}"
        detail, named = f"staffed {value!r}", ("staffed",)
    elif kind == 2:
        rows.append(rows[0])
        detail, named = "duplicate unit", ("duplicate",)
    elif kind == 3:
        rows = rows[1:]
        detail, named = f"no row for {units[0]}", (units[0],)
    elif kind == 4:
        rows[0] = f"{units[0]},10,20"
        detail, named = "staffed > beds", ("staffed",)
    elif kind == 5:
        text = ("unit,size\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n").encode()
        files = _allocate_files() | {"capacity.csv": text}
        return Case("allocate", argv(_ALLOCATE), files, ("capacity.csv", "beds"), "no beds column")
    elif kind == 6:
        files = _allocate_files() | {"capacity.csv": b"unit,beds,staffed\n"}
        return Case("allocate", argv(_ALLOCATE), files, ("capacity.csv",), "header only")
    elif kind == 7:
        files = _allocate_files()
        files["cap/.keep"] = b""
        return Case("allocate", argv({**_ALLOCATE, "--capacity": "cap"}), files, ("cap",), "a folder")
    else:
        files = _allocate_files() | {"capacity.csv": b"\xff\xfeu\x00n\x00i\x00t\x00"}
        return Case("allocate", argv(_ALLOCATE), files, ("capacity.csv",), "UTF-16")
    text = ("unit,beds,staffed\n" + "\n".join(rows) + "\n").encode()
    if rng.random() < 0.2:
        text, detail = _parquet(text), f"{detail} (Parquet)"
    files = _allocate_files() | {"capacity.csv": text}
    where = ("capacity.csv", *named) if kind != 3 else named
    return Case("allocate", argv(_ALLOCATE), files, where, detail)


@generator("allocate", "capacity-from")
def _allocate_capacity_from(rng: random.Random) -> Case:
    """--capacity-from records that are invalid, or a folder, or missing."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(fixtures.hospital_csv()), dtype=str)
    kind = rng.randrange(5)
    options = {"--forecast": "forecast.csv", "--capacity-from": "H000.csv", "--out": "plan"}
    files = _allocate_files()
    if kind == 0:
        row = rng.randrange(len(frame))
        value = rng.choice(["lots", "1e30", "-5", "nan"])
        column = "capacity" if "capacity" in frame.columns else "census"
        frame.loc[row, column] = value
        data = frame.to_csv(index=False).encode()
        if rng.random() < 0.3:
            data = _parquet(data)
        files["H000.csv"] = data
        return Case("allocate", argv(options), files, ("H000.csv", column), f"{column} {value!r}")
    if kind == 1:
        files["H000.csv"] = (
            frame.drop(columns=[c for c in ("capacity", "census") if c in frame.columns]).to_csv(index=False).encode()
        )
        return Case("allocate", argv(options), files, ("H000.csv",), "no capacity or census")
    if kind == 2:
        del files["H000.csv"]
        return Case("allocate", argv(options), files, ("H000.csv",), "missing")
    if kind == 3:
        del files["H000.csv"]
        files["H000.csv/.keep"] = b""
        return Case("allocate", argv(options), files, ("H000.csv",), "a folder")
    files["H000.csv"] = b""
    return Case("allocate", argv(options), files, ("H000.csv",), "empty")


@generator("allocate", "unit-config")
def _allocate_unit_config(rng: random.Random) -> Case:
    units = fixtures.units()
    kind = rng.randrange(8)
    if kind == 0:  # under_cost without over_cost: used to be ignored silently
        text = "unit,under_cost\n" + "".join(f"{u},20\n" for u in units)
        named: tuple[str, ...] = ("under_cost", "over_cost")
    elif kind == 1:
        text = "unit,over_cost,nurse_ratio\n" + "".join(f"{u},2,4\n" for u in units)
        named = ("over_cost", "under_cost")
    elif kind == 2:
        column = rng.choice(["under_cost", "over_cost", "nurse_ratio"])
        value = pick(rng, ("0", "-1", "nan", "inf", "1e300", "x", "1e-300"))
        cells = {"under_cost": "10", "over_cost": "1", "nurse_ratio": "4", column: value}
        text = "unit,under_cost,over_cost,nurse_ratio\n" + f"{units[0]},{cells['under_cost']},{cells['over_cost']},"
        text += f"{cells['nurse_ratio']}\n"
        named = (column,)
    elif kind == 3:
        text = "unit,under_cost,over_cost\n" + f"{units[0]},10,\n"
        named = ("over_cost",)
    elif kind == 4:
        text = "unit,under_cost,over_cost\nNoSuchUnit,10,1\n"
        named = ("NoSuchUnit",)
    elif kind == 5:
        text = "unit,under_cost,over_cost\n" + f"{units[0]},10,1\n{units[0]},5,1\n"
        named = ("twice",)
    elif kind == 6:
        text = "unit,undercost,over_cost\n" + f"{units[0]},10,1\n"
        named = ("undercost",)
    else:
        text = "ward,under_cost,over_cost\nicu,10,1\n"
        named = ("unit",)
    data = text.encode()
    if rng.random() < 0.2:
        data = _parquet(data)
    files = _allocate_files() | {"unit_config.csv": data}
    return Case("allocate", argv({**_ALLOCATE, "--unit-config": "unit_config.csv"}), files,
                ("unit_config.csv", *named), f"unit-config kind {kind}")  # fmt: skip


@generator("allocate", "options")
def _allocate_options(rng: random.Random) -> Case:
    option, values = rng.choice(
        [
            ("--under-cost", ("0", "-1", "nan", "inf", "1e300", "1e-300")),
            ("--over-cost", ("0", "-1", "nan", "inf", "1e300")),
            ("--default-nurse-ratio", ("0", "-4", "nan", "inf", "1e-300")),
            ("--shifts", ("0", "-1", "25", "1000000")),
            ("--risk-threshold", ("0", "1", "nan", "-0.5", "2")),
            ("--tail", ("gaussian", "", "NORMAL")),
            ("--nurse-ratio", ("ICU", "ICU=x", "=2", "ICU=0", "ICU=nan", "ICU=inf")),
        ]
    )
    value = pick(rng, values)
    return Case("allocate", argv({**_ALLOCATE, option: value}), _allocate_files(), (option,), f"{option} {value!r}")


@generator("allocate", "outputs")
def _allocate_outputs(rng: random.Random) -> Case:
    files = _allocate_files()
    kind = rng.randrange(5)
    if kind == 0:
        files["plan/plan.csv"] = b"old plan"
        return Case("allocate", argv(_ALLOCATE), files, ("plan.csv", "--force"), "plan exists")
    if kind == 4:
        files["plan"] = b"a file where the output folder goes"
        return Case("allocate", argv(_ALLOCATE), files, ("--out plan", "is a file"), "--out is a file")
    if kind == 1:
        return Case("allocate", argv({**_ALLOCATE, "--capacity-from": "H000.csv"}), files, ("exactly one",), "both")
    if kind == 2:
        options = {"--forecast": "forecast.csv", "--out": "plan"}
        return Case("allocate", argv(options), files, ("exactly one",), "no capacity")
    if rng.random() < 0.5:
        return Case("allocate", argv({**_ALLOCATE, "--forecast": "plan"}), files, ("plan",), "forecast: no such file")
    files["folder/forecast.csv"] = fixtures.forecast_csv()
    return Case("allocate", argv({**_ALLOCATE, "--forecast": "folder"}), files, ("folder",), "forecast is a folder")


# ---------------------------------------------------------------------------- allocate-region


def _region_files() -> dict[str, bytes]:
    return {
        "H000.csv": fixtures.shared_csv("H000"),
        "H001.csv": fixtures.shared_csv("H001"),
        "capacity.csv": fixtures.region_capacity_csv(),
    }


def _region_args(*forecasts: str, capacity: str = "capacity.csv", **options: str) -> tuple[str, ...]:
    out: list[str] = []
    for path in forecasts:
        out += ["--forecast", path]
    return (*out, *argv({"--capacity": capacity, "--out": "region", "--scenarios": "3", **options}))


@generator("allocate-region", "sources")
def _region_sources(rng: random.Random) -> Case:
    """The same hospital in two files, one file twice, a hospital with capacity but no forecast, or the reverse."""
    files = _region_files()
    kind = rng.randrange(5)
    if kind == 0:
        files["copy.csv"] = files["H000.csv"]
        return Case("allocate-region", _region_args("H000.csv", "H001.csv", "copy.csv"), files,
                    ("copy.csv", "H000", "H000.csv"), "same hospital in two files")  # fmt: skip
    if kind == 1:
        return Case("allocate-region", _region_args("H000.csv", "H001.csv", "H000.csv"), files,
                    ("H000.csv", "twice"), "same file twice")  # fmt: skip
    if kind == 2:
        files["capacity.csv"] += b"H002,100,80\n"
        return Case("allocate-region", _region_args("H000.csv", "H001.csv"), files, ("capacity.csv", "H002"),
                    "capacity without forecast")  # fmt: skip
    if kind == 3:
        return Case("allocate-region", _region_args("H000.csv"), files, ("capacity.csv", "H001"),
                    "a forecast missing")  # fmt: skip
    if rng.random() < 0.3:
        files["region"] = b"a file where the output folder goes"
        return Case("allocate-region", _region_args("H000.csv", "H001.csv"), files, ("--out region", "is a file"),
                    "--out is a file")  # fmt: skip
    files["capacity.csv"] = b"hospital,beds,staffed\nH000,300,250\n"
    return Case("allocate-region", _region_args("H000.csv", "H001.csv"), files, ("capacity.csv", "H001"),
                "capacity missing")  # fmt: skip


@generator("allocate-region", "shared")
def _region_shared(rng: random.Random) -> Case:
    """A shared table broken one way (values, levels, dates, columns, bytes)."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(fixtures.shared_csv("H001")), dtype=str, keep_default_na=False)
    kind = rng.randrange(8)
    row = rng.randrange(len(frame))
    named: tuple[str, ...] = ()
    if kind == 0:
        value = pick(rng, ("1e300", "1e30", "nan", "inf", "-1", "lots", ""))
        frame.loc[row, "value"] = value
        named, detail = ("value",), f"value {value!r}"
    elif kind == 1:
        value = pick(rng, ("0", "1", "1.5", "nan", "x"))
        frame.loc[row, "q"] = value
        named, detail = ("q",), f"q {value!r}"
    elif kind == 2:
        value = pick(rng, ("2024-13-01", "soon", ""))
        frame.loc[row, "date"] = value
        named, detail = ("date",), f"date {value!r}"
    elif kind == 3:
        column = rng.choice(["hospital", "date", "q", "value"])
        frame = frame.drop(columns=[column])
        named, detail = (column,), f"no {column}"
    elif kind == 4:
        frame = pd.concat([frame, frame.iloc[[row]]])
        named, detail = ("duplicate",), "duplicate row"
    elif kind == 5:
        level = frame.index[frame["q"].astype(float).eq(0.9)][0]
        frame.loc[level, "value"] = "0"
        named, detail = ("cross",), "crossing quantiles"
    elif kind == 6:
        frame.loc[row, "hospital"] = ""
        named, detail = ("hospital",), "empty hospital"
    else:
        files = _region_files() | {"H001.csv": rng.choice([b"", b"\x00\x01\x02", b"hospital,date,q,value\n"])}
        return Case("allocate-region", _region_args("H000.csv", "H001.csv"), files, ("H001.csv",), "bytes")
    files = _region_files() | {"H001.csv": frame.to_csv(index=False).encode()}
    return Case("allocate-region", _region_args("H000.csv", "H001.csv"), files, ("H001.csv", *named), detail)


@generator("allocate-region", "capacity")
def _region_capacity(rng: random.Random) -> Case:
    files = _region_files()
    value = pick(rng, ("1e30", "lots", "-1", "2.5", "nan", ""))
    kind = rng.randrange(4)
    if kind == 0:
        files["capacity.csv"] = f"hospital,beds,staffed\nH000,{value},10\nH001,300,250\n".encode()
        named: tuple[str, ...] = ("beds",)
    elif kind == 1:
        files["capacity.csv"] = b"hospital,beds\nH000,300\nH000,200\nH001,300\n"
        named = ("duplicate",)
    elif kind == 2:
        files["capacity.csv"] = b"beds,staffed\n300,250\n"
        named = ("hospital",)
    else:
        files["capacity.csv"] = b"unit,beds\nicu,30\n"
        named = ("hospital",)
    return Case("allocate-region", _region_args("H000.csv", "H001.csv"), files, ("capacity.csv", *named),
                f"capacity kind {kind} {value!r}")  # fmt: skip


@generator("allocate-region", "options")
def _region_options(rng: random.Random) -> Case:
    option, values = rng.choice(
        [
            ("--pool", ("-1", "nan", "inf", "1e300")),
            ("--under-cost", ("0", "-1", "nan", "inf")),
            ("--surge-cost", ("-1", "nan", "inf")),
            ("--transfer-cost", ("-1", "nan", "inf")),
            ("--neighbours", ("-1", "100000")),
            ("--scenarios", ("0", "-5", "1000001", "100000000")),
            ("--correlation", ("-0.1", "1.5", "nan")),
        ]
    )
    value = pick(rng, values)
    files = _region_files()
    return Case("allocate-region", _region_args("H000.csv", "H001.csv", **{option: value}), files, (option,),
                f"{option} {value!r}")  # fmt: skip
