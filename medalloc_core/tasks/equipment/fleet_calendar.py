"""A fleet's public calendar: the devices and days a node's equipment replies cover, declared in node config.

The fleet's start and end were the min and max over every device's events, so one device with a
single late event moved the end (issue 20: by 40 days; every device's training snapshots 4122 ->
5307, ``num-examples`` 192 -> 195). A node that declares

    fleet-devices = "D001,D002,..."     # exactly these devices; any other in the files is left out
    fleet-start   = "2023-01-01"
    fleet-end     = "2023-12-31"        # events outside [start, end] are left out

gets snapshots, a training split, a ``num-examples`` (the number of declared devices) and a
DP-SGD sampling rate (expected batch / declared devices, so the epsilon it reports too) that no
one device outside the list, and no event outside the days, can move. A deployed node refuses
without all three keys (``node-misconfigured``; its log names them, with the values its fleet
would suggest); only a simulated node takes the fleet's devices and days from its files, which
is then not public.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.contract import Fleet
from medalloc_core.privacy.calendar import CalendarError

__all__ = ["DeclaredFleet", "declared_fleet", "suggested_calendar", "undeclared_message"]

logger = logging.getLogger(__name__)

DEVICES_KEY, START_KEY, END_KEY = "fleet-devices", "fleet-start", "fleet-end"


@dataclass(frozen=True)
class DeclaredFleet(Fleet):
    """A fleet restricted to its declared devices and days; ``start``/``end`` are the declared ones."""

    first_day: pd.Timestamp | None = None
    last_day: pd.Timestamp | None = None
    declared_devices: int = 0

    @property
    def start(self) -> pd.Timestamp:
        assert self.first_day is not None
        return self.first_day

    @property
    def end(self) -> pd.Timestamp:
        assert self.last_day is not None
        return self.last_day


def suggested_calendar(fleet: Fleet) -> dict[str, str]:
    """The fleet calendar these files hold (every inventoried device, first to last event): a suggestion for the
    operator to check, never used undeclared by a deployed node."""
    return {
        DEVICES_KEY: ",".join(sorted(fleet.devices[ec.DEVICE_ID].astype(str))),
        START_KEY: f"{fleet.start:%Y-%m-%d}",
        END_KEY: f"{fleet.end:%Y-%m-%d}",
    }


def undeclared_message(fleet: Fleet) -> str:
    """What a deployed node without a fleet calendar logs: the keys to set, with the values its files suggest.

    The values are the node's own data: they go to its log for the operator, never into a reply.
    """
    keys = " ".join(f'{k}="{v}"' for k, v in suggested_calendar(fleet).items())
    return (
        "the fleet's calendar is not declared: a deployed node trains only on declared devices and days, so that "
        "no one device can change how many examples it reports or the sampling rate its epsilon follows. Set in "
        f"the node config {keys} (what these files hold: check it against the inventory you may publish; "
        "docs/privacy.md, 'Equipment')"
    )


def declared_fleet(fleet: Fleet, extra: Mapping[str, Any]) -> DeclaredFleet | None:
    """``fleet`` on the node's declared devices and days; None when the node declares none of the keys."""
    raw = {k: extra.get(k) for k in (DEVICES_KEY, START_KEY, END_KEY)}
    if all(v is None or not str(v).strip() for v in raw.values()):
        return None
    missing = [k for k, v in raw.items() if v is None or not str(v).strip()]
    if missing:
        raise CalendarError(f"a fleet calendar needs {DEVICES_KEY}, {START_KEY} and {END_KEY}; missing {missing}")
    devices = [d.strip() for d in str(raw[DEVICES_KEY]).split(",")]
    if any(not d for d in devices) or len(set(devices)) != len(devices):
        raise CalendarError(f"{DEVICES_KEY}: expected distinct, non-empty device ids separated by commas")
    try:
        start = pd.Timestamp(str(raw[START_KEY]).strip()).normalize()
        end = pd.Timestamp(str(raw[END_KEY]).strip()).normalize()
    except (ValueError, TypeError):
        raise CalendarError(f"{START_KEY} / {END_KEY}: expected dates YYYY-MM-DD") from None
    if end < start:
        raise CalendarError(f"{END_KEY} is before {START_KEY}")
    keep = fleet.devices[ec.DEVICE_ID].astype(str).isin(devices)
    events = fleet.events
    inside = (
        events[ec.DEVICE_ID].astype(str).isin(devices)
        & (events[ec.TIME] >= start)
        & (events[ec.TIME] < end + pd.Timedelta(days=1))
    )
    absent = len(set(devices) - set(fleet.devices.loc[keep, ec.DEVICE_ID].astype(str)))
    logger.info(
        "fleet calendar: %d device(s) outside fleet-devices and %d event(s) outside the days left out; "
        "%d declared device(s) not in the inventory",
        int((~keep).sum()),
        int((~inside).sum()),
        absent,
    )
    return DeclaredFleet(
        devices=fleet.devices[keep].reset_index(drop=True),
        events=events[inside].reset_index(drop=True),
        source=fleet.source,
        first_day=start,
        last_day=end,
        declared_devices=len(devices),
    )
