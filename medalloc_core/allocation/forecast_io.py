"""Read and write forecast frames and capacity tables, with errors that name file, row and column."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import CAPACITY, CENSUS, DATE, UNIT, DataContractError, Problem
from medalloc_core.io import read_table

logger = logging.getLogger(__name__)

# --- forecast frame: one row per (hospital, unit, date, target, quantile level) ----------
HOSPITAL = "hospital"
TARGET = "target"
Q = "q"  # quantile level in (0, 1)
VALUE = "value"  # patients (admissions) or occupied beds (census)
FORECAST_COLUMNS: tuple[str, ...] = (HOSPITAL, UNIT, DATE, TARGET, Q, VALUE)
TARGETS: tuple[str, ...] = ("admissions", "census")

# --- capacity table: one row per unit (optionally per hospital) ---------------------------
BEDS = "beds"  # physical beds
STAFFED = "staffed"  # optional staffed baseline

# The largest number of patients or beds one forecast value or one capacity entry may hold: far
# above any hospital (a unit's daily count is at most validation.MAX_COUNT = 100,000). Larger
# values are refused instead of overflowing the plan's whole-bed integers.
MAX_VALUE = 1_000_000


def _row(frame: pd.DataFrame, i: int) -> int:
    """Spreadsheet row of the ``i``-th record of a table from :func:`_read_csv` (header is row 1).

    The frame's index is each record's position in the file, blank lines included.
    """
    return int(frame.index[i]) + 2


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV or Parquet table, every value a string, with the loader's bounds and file-naming errors."""
    frame = read_table(Path(path))
    if frame.empty:
        raise DataContractError([Problem(str(path), "file has a header but no rows")])
    return frame


def _numeric(frame: pd.DataFrame, column: str, file: str, problems: list[Problem]) -> pd.Series:
    """Parse a column as float; every unparsable or missing cell becomes a Problem."""
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce").astype(float)
    for i in np.flatnonzero(values.isna().to_numpy()):
        raw = frame[column].iloc[i]
        what = "is empty" if pd.isna(raw) or not str(raw).strip() else f"'{raw}' is not a number"
        problems.append(Problem(file, f"{what}; expected a number", row=_row(frame, int(i)), column=column))
    return values


def read_forecast(path: Path) -> pd.DataFrame:
    """Read and validate a forecast frame written by ``medalloc forecast`` (or :func:`write_forecast`).

    Parameters
    ----------
    path : Path
        CSV with columns ``hospital, unit, date, target, q, value``.

    Returns
    -------
    pd.DataFrame
        Typed frame: ``hospital``/``unit``/``target`` str, ``date`` datetime64 (midnight),
        ``q`` float in (0, 1), ``value`` float >= 0, sorted by hospital, unit, target, date, q.

    Raises
    ------
    DataContractError
        With every problem found: missing columns, unparsable dates or numbers, q outside
        (0, 1), negative or non-finite values, duplicate rows, unknown targets, crossing
        quantiles (a higher level with a lower value on the same series and day).
    """
    file = str(path)
    raw = _read_csv(Path(path))
    missing = [c for c in FORECAST_COLUMNS if c not in raw.columns]
    if missing:
        raise DataContractError(
            [Problem(file, f"missing column(s) {missing}; a forecast frame has columns {list(FORECAST_COLUMNS)}")]
        )
    problems: list[Problem] = []
    for column in (HOSPITAL, UNIT, TARGET):
        for i in np.flatnonzero((raw[column].isna() | raw[column].str.strip().eq("")).to_numpy()):
            problems.append(Problem(file, "is empty; expected a name", row=_row(raw, int(i)), column=column))
    dates = parse_dates(raw, file, problems)
    q = _numeric(raw, Q, file, problems)
    value = _numeric(raw, VALUE, file, problems)
    bad_q = q.notna() & ~((q > 0) & (q < 1))
    for i in np.flatnonzero(bad_q.to_numpy()):
        problems.append(Problem(file, f"quantile level {q.iloc[i]} is outside (0, 1)", row=_row(raw, int(i)), column=Q))
    problems.extend(_value_problems(raw, value, file))
    target = raw[TARGET].str.strip().str.lower()
    bad_t = target.notna() & target.ne("") & ~target.isin(TARGETS)
    for i in np.flatnonzero(bad_t.to_numpy()):
        problems.append(
            Problem(
                file,
                f"unknown target '{raw[TARGET].iloc[i]}'; expected one of {list(TARGETS)}",
                row=_row(raw, int(i)),
                column=TARGET,
            )
        )
    if any(p.severity == "error" for p in problems):
        raise DataContractError(problems)

    frame = pd.DataFrame(
        {
            HOSPITAL: raw[HOSPITAL].str.strip().astype(str),
            UNIT: raw[UNIT].str.strip().astype(str),
            DATE: dates.dt.normalize(),
            TARGET: target.astype(str),
            Q: q.round(6),
            VALUE: value,
        }
    )
    keys = [HOSPITAL, UNIT, TARGET, DATE, Q]
    dup = frame.duplicated(keys, keep="first")
    for i in np.flatnonzero(dup.to_numpy()):
        problems.append(
            Problem(
                file, "duplicate (hospital, unit, target, date, q); each quantile appears once", row=_row(frame, int(i))
            )
        )
    problems.extend(_crossing_problems(frame, file))
    if problems:
        raise DataContractError(problems)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _crossing_problems(frame: pd.DataFrame, file: str) -> list[Problem]:
    """One Problem per row whose value is below the value of a lower quantile level of its series-day."""
    order = frame.reset_index().sort_values([HOSPITAL, UNIT, TARGET, DATE, Q], kind="stable")
    running_max = order.groupby([HOSPITAL, UNIT, TARGET, DATE], sort=False)[VALUE].cummax()
    crossing = order[VALUE] < running_max - 1e-9
    return [
        Problem(
            file,
            f"quantiles cross: q={order[Q].loc[i]} has value {order[VALUE].loc[i]} below a lower level's "
            f"{running_max.loc[i]}; quantile values must not decrease with q",
            row=int(order["index"].loc[i]) + 2,
            column=VALUE,
        )
        for i in order.index[crossing.to_numpy()]
    ]


def write_forecast(frame: pd.DataFrame, path: Path, *, overwrite: bool = False) -> Path:
    """Write a forecast frame as CSV with ISO dates; refuses to overwrite unless asked.

    Parameters
    ----------
    frame : pd.DataFrame
        Columns ``hospital, unit, date, target, q, value`` (extra columns are dropped).
    path : Path
        Destination CSV.
    overwrite : bool, default False
        Replace an existing file.
    """
    return write_dated_csv(frame, path, columns=FORECAST_COLUMNS, what="forecast frame", overwrite=overwrite)


def write_dated_csv(
    frame: pd.DataFrame, path: Path, *, columns: tuple[str, ...], what: str, overwrite: bool = False
) -> Path:
    """Write ``columns`` of ``frame`` as CSV with ISO dates; refuses to replace a file unless ``overwrite``."""
    path = Path(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; expected {list(columns)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    out = frame.loc[:, list(columns)].copy()
    out[DATE] = pd.to_datetime(out[DATE]).dt.strftime("%Y-%m-%d")
    atomic_write_bytes(path, out.to_csv(index=False).encode("utf-8"))  # never half a table
    return path


def read_capacity(path: Path, *, key: str = UNIT) -> pd.DataFrame:
    """Read a capacity table: columns ``unit, beds`` (+ optional ``hospital``, ``staffed``).

    With ``key="hospital"`` the table has one row per hospital instead (``hospital, beds[, staffed]``,
    the regional plan's input). Returns ``key`` (and ``hospital`` if present) as str, ``beds``
    int >= 0 and ``staffed`` int (defaults to ``beds`` when absent). Raises DataContractError
    naming row and column for missing, negative, fractional or duplicate entries.
    """
    file = str(path)
    raw = _read_csv(Path(path))
    missing = [c for c in (key, BEDS) if c not in raw.columns]
    if missing:
        raise DataContractError(
            [
                Problem(
                    file,
                    f"missing column(s) {missing}; a capacity table has columns {key}, beds [, staffed"
                    f"{', hospital' if key == UNIT else ''}]",
                )
            ]
        )
    problems: list[Problem] = []
    for i in np.flatnonzero((raw[key].isna() | raw[key].str.strip().eq("")).to_numpy()):
        problems.append(Problem(file, f"is empty; expected a {key} name", row=_row(raw, int(i)), column=key))
    columns = [BEDS] + ([STAFFED] if STAFFED in raw.columns else [])
    parsed = {c: _numeric(raw, c, file, problems) for c in columns}
    for c, values in parsed.items():
        bad = values.notna() & ~((values >= 0) & (values <= MAX_VALUE) & (values == np.floor(values)))
        for i in np.flatnonzero(bad.to_numpy()):
            problems.append(
                Problem(
                    file,
                    f"{values.iloc[i]} must be a whole number of beds from 0 to {MAX_VALUE:,}",
                    row=_row(raw, int(i)),
                    column=c,
                )
            )
    if problems:
        raise DataContractError(problems)
    out = pd.DataFrame({key: raw[key].str.strip().astype(str), BEDS: parsed[BEDS].astype("int64")})
    if key == UNIT and HOSPITAL in raw.columns:
        out.insert(0, HOSPITAL, raw[HOSPITAL].str.strip().astype(str))
    out[STAFFED] = parsed[STAFFED].astype("int64") if STAFFED in parsed else out[BEDS]
    keys = [c for c in (HOSPITAL, UNIT) if c in out.columns]
    for i in np.flatnonzero(out.duplicated(keys).to_numpy()):
        problems.append(
            Problem(file, f"duplicate {'/'.join(keys)}; one row per {key}", row=_row(raw, int(i)), column=key)
        )
    bad_staffed = out[STAFFED] > out[BEDS]
    for i in np.flatnonzero(bad_staffed.to_numpy()):
        problems.append(Problem(file, "staffed beds exceed physical beds", row=_row(raw, int(i)), column=STAFFED))
    if problems:
        raise DataContractError(problems)
    return out


def capacity_from_records(path: Path) -> pd.DataFrame:
    """Derive physical beds per unit from a hospital's records (CSV or Parquet, daily or encounters).

    The records are read and checked like every other input of a hospital
    (``validation.load_unit_records``). Uses the largest ``capacity`` seen per unit when the
    column exists, else the largest ``census`` (a lower bound on physical beds: logged as a
    warning, because a plan capped at it can never staff above what was ever occupied).
    """
    from medalloc_core.validation import load_unit_records

    return capacity_from_frame(load_unit_records(Path(path)).frame, str(path))


def capacity_from_frame(records: pd.DataFrame, file: str) -> pd.DataFrame:
    """:func:`capacity_from_records` on records already read (a node's source: OMOP, FHIR); ``file`` names them."""
    column = CAPACITY if CAPACITY in records.columns else CENSUS
    if column not in records.columns:
        raise DataContractError(
            [Problem(file, f"need a '{CAPACITY}' or '{CENSUS}' column to derive the capacity of each unit")]
        )
    if column == CENSUS:
        logger.warning("%s has no '%s' column; using the largest census per unit as physical beds", file, CAPACITY)
    frame = pd.DataFrame({UNIT: records[UNIT].astype(str), BEDS: records[column].astype(float)}).dropna()
    if frame.empty:
        raise DataContractError([Problem(file, f"no '{column}' values to derive capacity from", column=column)])
    beds = frame.groupby(UNIT)[BEDS].max().apply(lambda v: int(math.ceil(v)))
    out = beds.rename(BEDS).reset_index()
    out[STAFFED] = out[BEDS]
    return out


def parse_dates(raw: pd.DataFrame, file: str, problems: list[Problem]) -> pd.Series:
    """The ``date`` column as midnight timestamps; every unparsable cell becomes a Problem."""
    dates = pd.to_datetime(raw[DATE].str.strip(), errors="coerce", format="mixed")
    for i in np.flatnonzero(dates.isna().to_numpy()):
        problems.append(
            Problem(
                file, f"'{raw[DATE].iloc[i]}' is not a date; expected YYYY-MM-DD", row=_row(raw, int(i)), column=DATE
            )
        )
    return dates


def _value_problems(raw: pd.DataFrame, value: pd.Series, file: str) -> list[Problem]:
    bad = value.notna() & ~((value >= 0) & (value <= MAX_VALUE))
    return [
        Problem(
            file,
            f"value {value.iloc[i]} must be a number from 0 to {MAX_VALUE:,} (patients or beds)",
            row=_row(raw, int(i)),
            column=VALUE,
        )
        for i in np.flatnonzero(bad.to_numpy())
    ]


def read_noise_sd(path: Path) -> dict[str, float]:
    """The ``noise_sd`` column of a shared table, per hospital (``{}`` without one): the sd in beds of
    the DP noise `medalloc share` put on each number, so the regional plan can account for it.

    Raises DataContractError when it is not one finite number >= 0 per hospital.
    """
    file = str(path)
    raw = _read_csv(Path(path))
    if "noise_sd" not in raw.columns or HOSPITAL not in raw.columns:
        return {}
    problems: list[Problem] = []
    sd = _numeric(raw, "noise_sd", file, problems)
    for i in np.flatnonzero((sd.notna() & ~((sd >= 0) & np.isfinite(sd))).to_numpy()):
        problems.append(
            Problem(
                file, f"noise sd {sd.iloc[i]} is not a finite number >= 0", row=_row(raw, int(i)), column="noise_sd"
            )
        )
    if problems:
        raise DataContractError(problems)
    out: dict[str, float] = {}
    for hospital, values in sd.groupby(raw[HOSPITAL].astype(str).str.strip()):
        if values.nunique() != 1:
            raise DataContractError(
                [
                    Problem(
                        file, f"hospital '{hospital}' has several noise_sd values; a share has one", column="noise_sd"
                    )
                ]
            )
        out[str(hospital)] = float(values.iloc[0])
    return out


def read_shared(path: Path) -> pd.DataFrame:
    """Read one shared table (``hospital, date, q, value``, what `medalloc share` writes) or a forecast frame.

    A full forecast frame (it has a ``target`` column) is read with :func:`read_forecast` and
    summed to census totals per hospital-day. Returns ``hospital`` str, ``date`` midnight,
    ``q`` in (0, 1), ``value`` in [0, MAX_VALUE], one row per (hospital, date, q), quantiles not
    crossing; raises DataContractError naming file, row and column otherwise.
    """
    file = str(path)
    raw = _read_csv(Path(path))
    if TARGET in raw.columns:
        forecast = read_forecast(path)
        if not forecast[TARGET].eq(CENSUS).any():
            raise DataContractError([Problem(file, "has no census rows; the regional plan reads census quantiles")])
        census = forecast[forecast[TARGET] == CENSUS]
        return census.groupby([HOSPITAL, DATE, Q], as_index=False)[VALUE].sum().loc[:, [HOSPITAL, DATE, Q, VALUE]]
    columns = (HOSPITAL, DATE, Q, VALUE)
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise DataContractError(
            [Problem(file, f"missing column(s) {missing}; a shared table has columns {list(columns)}")]
        )
    problems: list[Problem] = []
    for i in np.flatnonzero((raw[HOSPITAL].isna() | raw[HOSPITAL].str.strip().eq("")).to_numpy()):
        problems.append(Problem(file, "is empty; expected a hospital name", row=_row(raw, int(i)), column=HOSPITAL))
    dates = parse_dates(raw, file, problems)
    q = _numeric(raw, Q, file, problems)
    value = _numeric(raw, VALUE, file, problems)
    for i in np.flatnonzero((q.notna() & ~((q > 0) & (q < 1))).to_numpy()):
        problems.append(Problem(file, f"quantile level {q.iloc[i]} is outside (0, 1)", row=_row(raw, int(i)), column=Q))
    problems.extend(_value_problems(raw, value, file))
    if problems:
        raise DataContractError(problems)
    frame = pd.DataFrame(
        {HOSPITAL: raw[HOSPITAL].str.strip().astype(str), DATE: dates.dt.normalize(), Q: q.round(6), VALUE: value}
    )
    for i in np.flatnonzero(frame.duplicated([HOSPITAL, DATE, Q]).to_numpy()):
        problems.append(
            Problem(file, "duplicate (hospital, date, q); each quantile appears once", row=_row(frame, int(i)))
        )
    with_unit = frame.assign(**{UNIT: "", TARGET: CENSUS})
    problems.extend(_crossing_problems(with_unit, file))
    if problems:
        raise DataContractError(problems)
    return frame.sort_values([HOSPITAL, DATE, Q], kind="stable").reset_index(drop=True)
