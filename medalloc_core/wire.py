"""A model's named arrays as one byte array on the wire, and back: fewer objects per deployed message (issue 25).

Flower 1.42 moves every ``Array`` of a message as objects of its own (the array and its chunks),
each with its own HTTP request at every hop: ServerApp -> SuperLink -> SuperNode -> ClientApp
process and back. Measured on a loaded two-core machine, each such request took 50-150 ms of the
SuperLink's time, and a train message of the four-array MLP was 13 objects: pulling one took a
node 1.5-2.5 s, and those requests were most of the coordinator's CPU. Packed, the model is one
array (two objects, the array and its chunk) whatever its number of layers.

The format is deliberately plain: an 8-byte little-endian header length, a JSON header
``[[name, dtype, shape], ...]`` in the record's order, then each array's C-order bytes. Nothing
is pickled; :func:`unpack_arrays` checks the header, every dtype (numbers only) and that the
sizes add up exactly, and raises :class:`WireError` otherwise. Both apps use it through their
own Flower adapters (``server.grid_io`` packs what the ServerApp sends and unpacks the replies;
``client.wire`` unpacks a request and packs its reply), so strategies, reply checks and the
node's privacy checks see the same named arrays as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

# The name of the one array in a packed ArrayRecord: a record holding only this name is packed.
PACKED_NAME = "medalloc.packed-arrays"
_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 1 << 24  # far above any model's names, far below a size that could hurt


class WireError(ValueError):
    """A packed array that does not unpack: the message says what is wrong."""


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``arrays`` (name -> numeric array) as one 1-D uint8 array, in their order."""
    if PACKED_NAME in arrays:
        raise WireError(f"an array may not be named {PACKED_NAME!r}")
    values = [np.asarray(a) for a in arrays.values()]
    for name, value in zip(arrays, values):
        if value.dtype.kind not in "biuf":
            raise WireError(f"array {name!r}: dtype {value.dtype} is not a number type")
    header = json.dumps([[name, v.dtype.str, list(v.shape)] for name, v in zip(arrays, values)]).encode()
    blob = b"".join([len(header).to_bytes(_LENGTH_BYTES, "little"), header, *(v.tobytes(order="C") for v in values)])
    return np.frombuffer(blob, dtype=np.uint8)


def unpack_arrays(packed: np.ndarray) -> dict[str, np.ndarray]:
    """The named arrays :func:`pack_arrays` packed (each its own copy); :class:`WireError` if ``packed`` is not that."""
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise WireError(f"a packed model is a 1-D uint8 array, got {packed.dtype} of shape {packed.shape}")
    data = packed.tobytes()
    if len(data) < _LENGTH_BYTES:
        raise WireError("a packed model is shorter than its header length")
    size = int.from_bytes(data[:_LENGTH_BYTES], "little")
    if size > min(_MAX_HEADER_BYTES, len(data) - _LENGTH_BYTES):
        raise WireError(f"a packed model's header length ({size} bytes) exceeds the data")
    try:
        header = json.loads(data[_LENGTH_BYTES : _LENGTH_BYTES + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"a packed model's header is not JSON ({exc})") from None
    if not isinstance(header, list):
        raise WireError("a packed model's header is not a list of [name, dtype, shape]")
    out: dict[str, np.ndarray] = {}
    offset = _LENGTH_BYTES + size
    for entry in header:
        name, dtype, shape = _entry(entry)
        if name in out:
            raise WireError(f"array {name!r} appears twice in a packed model")
        count = math.prod(shape)
        end = offset + count * dtype.itemsize
        if end > len(data):
            raise WireError(f"array {name!r} ({dtype}, shape {shape}) runs past the end of the packed model")
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
        offset = end
    if offset != len(data):
        raise WireError(f"a packed model has {len(data) - offset} bytes after its last array")
    return out


def _entry(entry: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    """One header entry, checked: a name, a numeric dtype, a shape of non-negative ints."""
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], str)):
        raise WireError(f"a packed model's header entry is not [name, dtype, shape]: {str(entry)[:80]}")
    name, dtype_text, shape = entry
    try:
        dtype = np.dtype(dtype_text)
    except TypeError:
        raise WireError(f"array {name!r}: {dtype_text!r} is not a dtype") from None
    if dtype.kind not in "biuf":
        raise WireError(f"array {name!r}: dtype {dtype} is not a number type")
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise WireError(f"array {name!r}: shape {str(shape)[:80]} is not a list of non-negative integers")
    return name, dtype, tuple(shape)
