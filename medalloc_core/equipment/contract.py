"""The equipment data contract: a device inventory and an event log per hospital, and the typed fleet they load into.

Everything that reads a hospital's device files speaks these names, so validation, loading,
the generator, the features and the maintenance plan agree on one vocabulary (see
docs/equipment.md, "Your files").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pandas as pd

# --- the device inventory: one row per device ----------------------------------------
DEVICE_ID = "device_id"  # unique within the hospital (asset tag)
DEVICE_TYPE = "device_type"  # e.g. infusion_pump, ventilator (free text; the model hashes it)
UNIT = "unit"  # where the device is kept (ICU, ED, ...)
INSTALL_DATE = "install_date"  # commissioning date (ISO date)
MANUFACTURER = "manufacturer"  # maker (free text; 'unknown' when not known)
INVENTORY_COLUMNS: tuple[str, ...] = (DEVICE_ID, DEVICE_TYPE, UNIT, INSTALL_DATE, MANUFACTURER)

# --- the event log: one row per event ----------------------------------------------------
TIME = "time"  # ISO date or date-time of the event
EVENT = "event"  # one of EventKind
VALUE = "value"  # usage: hours of use; error: the error code; empty for the other kinds
EVENT_COLUMNS: tuple[str, ...] = (DEVICE_ID, TIME, EVENT)  # plus VALUE when usage or error events occur

# Upper bound of the usage hours a device can log in one calendar day.
HOURS_PER_DAY = 24.0

# The two files of a fleet folder (CSV or Parquet each, detected from the bytes).
INVENTORY_STEM = "devices"
EVENTS_STEM = "events"

EquipmentShape = Literal["inventory", "events"]


class EventKind(StrEnum):
    """What an event-log row records."""

    USAGE = "usage"  # the device ran VALUE hours (a session or a day's total), logged at TIME
    ERROR = "error"  # the device logged error code VALUE
    PREVENTIVE = "preventive"  # a preventive (scheduled) service was completed
    REPAIR = "repair"  # a corrective repair was completed (ends a failure's downtime)
    FAILURE = "failure"  # the device failed in use; it is down until the next repair


EVENT_KINDS: tuple[str, ...] = tuple(k.value for k in EventKind)


@dataclass(frozen=True)
class Fleet:
    """One hospital's validated device inventory and event log, ready for features.

    ``devices`` has the inventory columns (``install_date`` as datetime64 at midnight, the
    others str), one row per device, sorted by ``device_id``. ``events`` has ``device_id``,
    ``time`` (datetime64), ``event`` (str, one of ``EVENT_KINDS``), ``hours`` (float; usage
    rows, NaN elsewhere) and ``code`` (str; error rows, None elsewhere), sorted by
    (device_id, time, event order), every device known to the inventory.
    """

    devices: pd.DataFrame
    events: pd.DataFrame
    source: Path

    @property
    def start(self) -> pd.Timestamp:
        """First day the event log covers (midnight of its earliest event)."""
        return pd.Timestamp(self.events[TIME].min()).normalize()

    @property
    def end(self) -> pd.Timestamp:
        """Last day the event log covers (midnight of its latest event)."""
        return pd.Timestamp(self.events[TIME].max()).normalize()

    @property
    def device_types(self) -> list[str]:
        """The device types present, sorted."""
        return sorted(self.devices[DEVICE_TYPE].unique().tolist())
