"""Calendar effects of the synthetic region: public holidays, weekday and winter factors."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

#: Fixed-date public holidays of the generic calendar (month, day, name).
FIXED_HOLIDAYS: tuple[tuple[int, int, str], ...] = (
    (1, 1, "New Year's Day"),
    (5, 1, "Labour Day"),
    (8, 15, "Assumption Day"),
    (11, 1, "All Saints' Day"),
    (12, 25, "Christmas Day"),
    (12, 26, "Boxing Day"),
)
#: Holidays that move with Easter Sunday (offset in days, name).
EASTER_HOLIDAYS: tuple[tuple[int, str], ...] = (
    (-2, "Good Friday"),
    (1, "Easter Monday"),
    (39, "Ascension Day"),
    (50, "Whit Monday"),
)


def easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm, valid for every Gregorian year)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month, day = divmod(h + el - 7 * m + 114, 31)
    return date(year, month, day + 1)


def public_holidays(first: date, last: date) -> list[tuple[date, str]]:
    """Every public holiday of the generic calendar between ``first`` and ``last`` inclusive."""
    found: list[tuple[date, str]] = []
    for year in range(first.year, last.year + 1):
        for month, day, name in FIXED_HOLIDAYS:
            found.append((date(year, month, day), name))
        easter = easter_sunday(year)
        for offset, name in EASTER_HOLIDAYS:
            found.append((easter + timedelta(days=offset), name))
    return sorted((d, n) for d, n in found if first <= d <= last)


def day_grid(start: date, first_offset: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weekday (0 = Monday), day of year (1-based) and holiday flag for ``n`` days.

    Day ``t`` of the grid is ``start + first_offset + t``; the warm-up has negative offsets.
    """
    first = start + timedelta(days=first_offset)
    dates = np.arange(np.datetime64(first, "D"), np.datetime64(first, "D") + n)  # (n,)
    weekday = (dates.astype("int64") + 3) % 7  # 1970-01-01 was a Thursday
    years = dates.astype("datetime64[Y]")
    doy = (dates - years.astype("datetime64[D]")).astype("int64") + 1
    last = first + timedelta(days=n - 1)
    holiday_days = np.array([np.datetime64(d, "D") for d, _ in public_holidays(first, last)], dtype="datetime64[D]")
    holiday = np.isin(dates, holiday_days)
    return weekday, doy, holiday


def winter_factor(doy: np.ndarray, *, amplitude: float, peak_doy: int) -> np.ndarray:
    """Annual seasonality ``1 + amplitude * cos(2 pi (doy - peak_doy) / 365.25)``."""
    return 1.0 + amplitude * np.cos(2.0 * np.pi * (doy - peak_doy) / 365.25)
