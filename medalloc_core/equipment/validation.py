"""Check a hospital's device inventory and event log against the equipment contract, and load them as a ``Fleet``.

The same promises as the unit-record validator (``medalloc_core.validation``): every problem
names the file, the spreadsheet row and the column and says what was expected; nothing is
ever written; a report never raises for bad input. A *fleet folder* holds ``devices.csv`` (or
``.parquet``) and ``events.csv`` (or ``.parquet``); validating the folder also checks the two
files against each other (every event's device is in the inventory, no event before its
device was commissioned). See docs/equipment.md, "Your files".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medalloc_core.contract import DataContractError, Problem
from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.contract import EquipmentShape, EventKind, Fleet
from medalloc_core.io import read_table
from medalloc_core.validation import (
    Findings,
    ValidationReport,
    missing_columns,
    parse_dates,
    report_duplicates,
    show_value,
    text_values,
)

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".csv", ".parquet")
_INVENTORY_ONLY = {ec.DEVICE_TYPE, ec.INSTALL_DATE, ec.MANUFACTURER}
_EVENTS_ONLY = {ec.EVENT, ec.TIME}
_KNOWN_COLUMNS = {*ec.INVENTORY_COLUMNS, *ec.EVENT_COLUMNS, ec.VALUE}
_EVENT_ORDER = {k: i for i, k in enumerate((EventKind.FAILURE, EventKind.ERROR, EventKind.USAGE))}
_KINDS_EXPECTED = f"expected one of {', '.join(ec.EVENT_KINDS)}"
_HOURS_EXPECTED = f"expected the hours of use, a number from 0 to {ec.HOURS_PER_DAY:g}"


def detect_equipment_shape(columns: list[str]) -> EquipmentShape | None:
    """``"inventory"``, ``"events"`` or ``None`` (not an equipment file) from a header, case-insensitively.

    A header with ``install_date``, ``device_type`` or ``manufacturer`` is an inventory; one
    with ``event`` (or ``time`` beside ``device_id``) is an event log.
    """
    present = {c.strip().lower() for c in columns}
    if present & _INVENTORY_ONLY:
        return "inventory"
    if ec.EVENT in present or (ec.TIME in present and ec.DEVICE_ID in present):
        return "events"
    return None


def is_fleet_folder(path: Path) -> bool:
    """True for a folder holding a ``devices.*`` or an ``events.*`` file."""
    return path.is_dir() and any(
        (path / f"{stem}{suffix}").exists() for stem in (ec.INVENTORY_STEM, ec.EVENTS_STEM) for suffix in DATA_SUFFIXES
    )


def fleet_files(folder: Path) -> tuple[Path | None, Path | None, list[Problem]]:
    """The inventory and event-log files of a fleet folder, and the problems finding them."""
    problems: list[Problem] = []
    found: list[Path | None] = []
    for stem, what in ((ec.INVENTORY_STEM, "the device inventory"), (ec.EVENTS_STEM, "the event log")):
        candidates = [folder / f"{stem}{s}" for s in DATA_SUFFIXES if (folder / f"{stem}{s}").exists()]
        if not candidates:
            problems.append(
                Problem(
                    str(folder),
                    f"no {stem}.csv or {stem}.parquet: a fleet folder holds {what} as {stem}.csv (or .parquet) "
                    f"next to {ec.EVENTS_STEM if stem == ec.INVENTORY_STEM else ec.INVENTORY_STEM}.csv",
                )
            )
            found.append(None)
        elif len(candidates) > 1:
            problems.append(
                Problem(str(folder), f"both {stem}.csv and {stem}.parquet: keep one, so it is clear which is read")
            )
            found.append(None)
        else:
            found.append(candidates[0])
    return found[0], found[1], problems


def equipment_reports(path: Path) -> list[ValidationReport] | None:
    """Validate ``path`` if it is equipment data (a fleet folder, an inventory or an event log), else ``None``.

    What ``medalloc validate`` asks first; ``None`` sends the path to the unit-record validator
    (which also reports unreadable files).
    """
    path = Path(path)
    if path.is_dir():
        return validate_fleet(path) if is_fleet_folder(path) else None
    try:
        raw = read_table(path)
    except DataContractError:
        return None
    if detect_equipment_shape(list(raw.columns)) is None:
        return None
    report, _ = _inspect_file(path, None, raw=raw)
    return [report]


def validate_equipment_file(path: Path) -> ValidationReport:
    """Check one inventory or event-log file on its own (no cross-file checks); never raises for bad input."""
    report, _ = _inspect_file(Path(path), None)
    return report


def validate_fleet(folder: Path) -> list[ValidationReport]:
    """Check a fleet folder: both files, then the event log against the inventory. One report per file.

    A missing or ambiguous file gives a report for the folder itself.
    """
    folder = Path(folder)
    reports, _ = _inspect_fleet(folder)
    return reports


def load_fleet(folder: Path) -> Fleet:
    """Read, validate and type a fleet folder.

    Raises
    ------
    DataContractError
        Carrying every problem when either file (or their combination) has an error.
        Warnings are logged and do not stop loading.
    """
    reports, fleet = _inspect_fleet(Path(folder))
    for report in reports:
        for problem in report.warnings:
            logger.warning("%s", problem)
    if fleet is None:
        raise DataContractError([p for r in reports for p in r.problems])
    return fleet


# ---------------------------------------------------------------------------- internals
def _inspect_fleet(folder: Path) -> tuple[list[ValidationReport], Fleet | None]:
    inventory_path, events_path, problems = fleet_files(folder)
    if problems or inventory_path is None or events_path is None:
        return [ValidationReport(folder, problems, {"file": str(folder)})], None
    inventory_report, devices = _inspect_file(inventory_path, "inventory")
    events_report, events = _inspect_file(events_path, "events", devices=devices)
    reports = [inventory_report, events_report]
    if devices is None or events is None or not all(r.ok for r in reports):
        return reports, None
    return reports, Fleet(devices=devices, events=events, source=folder)


def _canonical(raw: pd.DataFrame) -> pd.DataFrame:
    """Contract column names matched case-insensitively (``Device_ID`` -> ``device_id``)."""
    taken = set(raw.columns)
    rename = {}
    for column in raw.columns:
        lowered = column.lower()
        if lowered in _KNOWN_COLUMNS and lowered != column and lowered not in taken:
            rename[column] = lowered
            taken.add(lowered)
    return raw.rename(columns=rename) if rename else raw


def _inspect_file(
    path: Path,
    expected: EquipmentShape | None,
    *,
    devices: pd.DataFrame | None = None,
    raw: pd.DataFrame | None = None,
) -> tuple[ValidationReport, pd.DataFrame | None]:
    name = str(path)
    findings = Findings(name)
    summary: dict[str, Any] = {"file": name}
    if raw is None:
        try:
            raw = read_table(path)
        except DataContractError as exc:
            return ValidationReport(path, list(exc.problems), summary), None
    frame = _canonical(raw)
    shape = expected or detect_equipment_shape(list(frame.columns))
    summary.update(format=raw.attrs.get("format"), shape=shape, rows=len(frame))
    if shape is None:
        findings.add(
            f"is neither a device inventory ({', '.join(ec.INVENTORY_COLUMNS)}) nor an event log "
            f"({', '.join(ec.EVENT_COLUMNS)}, {ec.VALUE}) (found: {', '.join(frame.columns)})",
            row=1,
        )
        return ValidationReport(path, findings.problems, summary), None
    if shape == "inventory":
        typed = _check_inventory(frame, findings, summary)
    else:
        typed = _check_events(frame, findings, summary, devices)
    if typed is None or findings.has_errors:
        return ValidationReport(path, findings.problems, summary), None
    return ValidationReport(path, findings.problems, summary), typed


def _required_text(frame: pd.DataFrame, column: str, findings: Findings, expected: str) -> pd.Series:
    values = text_values(frame, column)
    findings.rows(values.isna(), column, lambda i: f"empty {column}; expected {expected}")
    return values


def _check_inventory(frame: pd.DataFrame, findings: Findings, summary: dict[str, Any]) -> pd.DataFrame | None:
    what = f"a device inventory needs {', '.join(ec.INVENTORY_COLUMNS)}"
    if missing_columns(frame, ec.INVENTORY_COLUMNS, findings, what):
        return None
    summary["columns_ignored"] = [c for c in frame.columns if c not in ec.INVENTORY_COLUMNS]
    device = _required_text(frame, ec.DEVICE_ID, findings, "the device's asset tag, unique in the file")
    dtype = _required_text(frame, ec.DEVICE_TYPE, findings, "the kind of device, e.g. infusion_pump or ventilator")
    unit = _required_text(frame, ec.UNIT, findings, "where the device is kept, e.g. ICU")
    maker = _required_text(frame, ec.MANUFACTURER, findings, "the manufacturer ('unknown' if it is not known)")
    installed = parse_dates(frame, ec.INSTALL_DATE, findings, required=True)
    with_id = device.dropna()
    report_duplicates(
        with_id.to_frame(),
        findings,
        ec.DEVICE_ID,
        lambda i, first: (
            f"duplicate device_id {show_value(with_id[i])}, first at row {first}; expected one row per device"
        ),
    )
    summary["devices"] = int(with_id.nunique())
    summary["device_types"] = sorted(dtype.dropna().unique().tolist())
    summary["units"] = sorted(unit.dropna().unique().tolist())
    if installed.notna().any():
        summary["date_start"] = f"{installed.min():%Y-%m-%d}"
        summary["date_end"] = f"{installed.max():%Y-%m-%d}"
    if findings.has_errors:
        return None
    typed = pd.DataFrame(
        {
            ec.DEVICE_ID: device,
            ec.DEVICE_TYPE: dtype,
            ec.UNIT: unit,
            ec.INSTALL_DATE: installed.dt.normalize(),
            ec.MANUFACTURER: maker,
        }
    )
    return typed.sort_values(ec.DEVICE_ID).reset_index(drop=True)


def _check_events(
    frame: pd.DataFrame, findings: Findings, summary: dict[str, Any], devices: pd.DataFrame | None
) -> pd.DataFrame | None:
    what = f"an event log needs {', '.join(ec.EVENT_COLUMNS)} (and {ec.VALUE} for usage hours and error codes)"
    if missing_columns(frame, ec.EVENT_COLUMNS, findings, what):
        return None
    summary["columns_ignored"] = [c for c in frame.columns if c not in (*ec.EVENT_COLUMNS, ec.VALUE)]
    device = _required_text(frame, ec.DEVICE_ID, findings, "the device's asset tag as in the inventory")
    times = parse_dates(frame, ec.TIME, findings, required=True)
    event_text = text_values(frame, ec.EVENT)
    event = event_text.str.lower()
    findings.rows(event_text.isna(), ec.EVENT, lambda i: f"empty event; {_KINDS_EXPECTED}")
    unknown = event.notna() & ~event.isin(ec.EVENT_KINDS)
    findings.rows(unknown, ec.EVENT, lambda i: f"{show_value(event_text[i])} is not an event kind; {_KINDS_EXPECTED}")
    usage = event.eq(EventKind.USAGE)
    errors = event.eq(EventKind.ERROR)
    if ec.VALUE not in frame.columns:
        needs = usage | errors
        if needs.any():
            kind = "usage" if usage.any() else "error"
            findings.add(
                f"missing column '{ec.VALUE}': {kind} events need it (hours of use, error codes) "
                f"(found: {', '.join(frame.columns)})",
                row=1,
                column=ec.VALUE,
            )
        value = pd.Series(pd.NA, index=frame.index, dtype="string")
    else:
        value = text_values(frame, ec.VALUE)
    hours = pd.to_numeric(value.where(usage), errors="coerce").astype("float64")
    findings.rows(usage & value.isna(), ec.VALUE, lambda i: f"empty value of a usage event; {_HOURS_EXPECTED}")
    bad_hours = usage & value.notna() & ~(hours.between(0.0, ec.HOURS_PER_DAY))
    findings.rows(
        bad_hours,
        ec.VALUE,
        lambda i: f"{show_value(value[i])} is not a number of hours from 0 to {ec.HOURS_PER_DAY:g}; {_HOURS_EXPECTED}",
    )
    findings.rows(errors & value.isna(), ec.VALUE, lambda i: "empty value of an error event; expected the error code")
    hours = hours.where(~bad_hours)
    keyed = pd.DataFrame({ec.DEVICE_ID: device, ec.TIME: times, ec.EVENT: event, ec.VALUE: value.fillna("")})
    complete = keyed[ec.DEVICE_ID].notna() & keyed[ec.TIME].notna() & keyed[ec.EVENT].isin(ec.EVENT_KINDS)
    keyed = keyed.loc[complete]
    report_duplicates(
        keyed,
        findings,
        ec.TIME,
        lambda i, first: (
            f"duplicate event ({keyed.at[i, ec.DEVICE_ID]}, {keyed.at[i, ec.TIME]:%Y-%m-%d %H:%M}, "
            f"{keyed.at[i, ec.EVENT]}), first at row {first}; expected each event once"
        ),
    )
    _check_daily_hours(device, times, hours, usage, findings)
    if devices is not None:
        _check_against_inventory(device, times, devices, findings)
    summary["devices"] = int(device.nunique())
    summary["events"] = {k: int(event.eq(k).sum()) for k in ec.EVENT_KINDS}
    if times.notna().any():
        summary["date_start"] = f"{times.min():%Y-%m-%d}"
        summary["date_end"] = f"{times.max():%Y-%m-%d}"
    if findings.has_errors:
        return None
    typed = pd.DataFrame(
        {
            ec.DEVICE_ID: device,
            ec.TIME: times,
            ec.EVENT: event,
            "hours": hours.where(usage),
            "code": value.where(errors).astype(object).where(errors, None),
        }
    )
    order = typed[ec.EVENT].map(lambda k: _EVENT_ORDER.get(k, len(_EVENT_ORDER)))
    typed = typed.assign(_order=order).sort_values([ec.DEVICE_ID, ec.TIME, "_order"], kind="stable")
    typed = typed.drop(columns="_order").reset_index(drop=True)
    _warn_double_failures(typed, findings)
    return typed


def _check_daily_hours(
    device: pd.Series, times: pd.Series, hours: pd.Series, usage: pd.Series, findings: Findings
) -> None:
    """A device cannot run more than 24 hours on one calendar day: flag the row that takes its total past 24."""
    rows = usage & hours.notna() & device.notna() & times.notna()
    if not rows.any():
        return
    frame = pd.DataFrame({"d": device[rows], "day": times[rows].dt.normalize(), "h": hours[rows]})
    running = frame.groupby(["d", "day"], sort=False)["h"].cumsum()
    total = frame.groupby(["d", "day"], sort=False)["h"].transform("sum")
    previous = running - frame["h"]
    crossing = (running > ec.HOURS_PER_DAY + 1e-9) & (previous <= ec.HOURS_PER_DAY + 1e-9)
    flagged = pd.Series(False, index=device.index)
    flagged[crossing[crossing].index] = True
    findings.rows(
        flagged,
        ec.VALUE,
        lambda i: (
            f"device {show_value(device[i])} logs {total[i]:g} hours of use on {times[i]:%Y-%m-%d} "
            f"(this row takes it past {ec.HOURS_PER_DAY:g}); expected at most {ec.HOURS_PER_DAY:g} hours per day"
        ),
    )


def _check_against_inventory(device: pd.Series, times: pd.Series, devices: pd.DataFrame, findings: Findings) -> None:
    """Every event's device is in the inventory, and no event predates the device's commissioning."""
    installed = devices.set_index(ec.DEVICE_ID)[ec.INSTALL_DATE]
    known = device.isin(installed.index)
    findings.rows(
        device.notna() & ~known,
        ec.DEVICE_ID,
        lambda i: (
            f"device {show_value(device[i])} is not in the inventory ({ec.INVENTORY_STEM}.csv); "
            "expected every event's device_id to be listed there"
        ),
    )
    since = device.map(installed)
    early = known & times.notna() & (times.dt.normalize() < since)
    findings.rows(
        early,
        ec.TIME,
        lambda i: (
            f"event on {times[i]:%Y-%m-%d} is before device {show_value(device[i])} was installed "
            f"({since[i]:%Y-%m-%d} in the inventory); expected events on or after install_date"
        ),
    )


def _warn_double_failures(events: pd.DataFrame, findings: Findings) -> None:
    """A failure while the device is already down (no repair since the last failure) is counted as one downtime."""
    marks = events[ec.EVENT].isin([EventKind.FAILURE, EventKind.REPAIR])
    sub = events.loc[marks]
    previous = sub.groupby(ec.DEVICE_ID)[ec.EVENT].shift(1)
    double = sub[ec.EVENT].eq(EventKind.FAILURE) & previous.eq(EventKind.FAILURE)
    if not double.any():
        return
    first = double[double].index[0]
    findings.add(
        f"{int(double.sum())} failure(s) follow another failure of the same device with no repair between; "
        f"first: device {show_value(sub.at[first, ec.DEVICE_ID])} on {sub.at[first, ec.TIME]:%Y-%m-%d}; "
        "the device is counted as down from the first failure to the next repair",
        column=ec.EVENT,
        severity="warning",
    )
