"""Content fingerprint of a data frame: same data, same key, whatever the row order or format."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

__all__ = ["FINGERPRINT_VERSION", "fingerprint_frame"]

# Bump only together with a migration note: a new scheme gives every dataset a new key, and
# although the ledger's budget composes over all entries (so no budget is ever refreshed),
# per-entry reporting would split.
FINGERPRINT_VERSION = "medalloc-frame-v1"
_NULL = "\x00null"


def _canonical_column(values: pd.Series) -> list[str]:
    """Render one column as canonical strings, independent of how it was read.

    Numbers: integral values as integers ("3", also from 3.0 or "3"), others as the shortest
    repr of the float ("0.1"). Dates: ISO ("2024-01-31" at midnight, full ISO otherwise).
    Anything else: the stripped string. Missing values: one sentinel. A CSV read as strings
    and the typed frame from Parquet therefore render identically.
    """
    if pd.api.types.is_bool_dtype(values.dtype):
        return [_NULL if pd.isna(v) else str(bool(v)) for v in values]
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = pd.DatetimeIndex(values)
        midnight = bool(((stamps.isna()) | (stamps == stamps.normalize())).all())
        fmt = "%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M:%S.%f"
        return [_NULL if pd.isna(v) else v.strftime(fmt) for v in stamps]

    present = values.notna()
    as_text = values.astype("string").str.strip()
    present &= as_text.fillna("") != ""
    numeric = pd.to_numeric(as_text.where(present), errors="coerce")
    if bool(numeric[present].notna().all()) and bool(present.any()):
        out: list[str] = []
        for is_present, number in zip(present, numeric.to_numpy(dtype="float64", na_value=np.nan)):
            if not is_present:
                out.append(_NULL)
            elif math.isfinite(number) and float(number).is_integer() and abs(number) < 2**53:
                out.append(str(int(number)))
            else:
                out.append(repr(float(number)))
        return out
    return [str(t) if ok else _NULL for ok, t in zip(present, as_text.fillna(""))]


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """SHA-256 of a canonical serialisation of ``frame``'s content.

    The key identifies *the data actually used*, so the privacy ledger can tell whether a
    run trained on the same records as before. Canonical means: columns sorted by name,
    each value rendered by type-independent rules (see ``_canonical_column``), rows sorted;
    the index is ignored. Reading the same table from CSV or Parquet, in any row or column
    order, gives the same key; any change to a value, row or column name gives a new one.

    Parameters
    ----------
    frame
        The table a run trains on (raw strings from ``read_table`` or typed records).

    Returns
    -------
    str
        ``"sha256:<64 hex digits>"``.
    """
    names = [str(c).strip() for c in frame.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"cannot fingerprint a frame with duplicate column names: {names}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    columns = [_canonical_column(frame.iloc[:, i]) for i in order]
    rows = sorted(zip(*columns)) if columns else []
    digest = hashlib.sha256()
    header = {"scheme": FINGERPRINT_VERSION, "columns": [names[i] for i in order], "rows": len(rows)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for row in rows:
        digest.update(b"\n")
        digest.update(json.dumps(row, ensure_ascii=True).encode())
    return "sha256:" + digest.hexdigest()
