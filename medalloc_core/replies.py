"""The one gate every node reply passes: checked against its task's allow-list, refusals reduced to fixed text.

``protocol.REPLY_ALLOW_LIST`` (and each task's own, e.g. the equipment task's) says what a node
may send and why it is public or post-processing. Listing it is not enough: the node itself
checks every reply against it before sending (issue 20), and turns anything else — an unknown
metric key, a non-finite value, arrays in a reply that may carry none, a refusal reason that is
not its code's fixed text, an exception nobody foresaw — into a fixed refusal code whose text
holds no path, row, unit or count. The ClientApp builds its Flower ``Message`` only from what
this module returns.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medalloc_core import protocol
from medalloc_core.protocol import Refusal

__all__ = ["CheckedRefusal", "CheckedReply", "ReplyNotAllowed", "allow_list", "check_refusal", "check_reply"]

logger = logging.getLogger(__name__)


class ReplyNotAllowed(ValueError):
    """A reply the node built is not on its task's allow-list; it is never sent."""


@dataclass(frozen=True)
class CheckedReply:
    """A reply that passed the allow-list: exactly what goes into the Flower message."""

    metrics: dict[str, int | float | list[float]]
    arrays: Mapping[str, Any] | None
    node_info: dict[str, str]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # optional ConfigRecords (allow-listed)


@dataclass(frozen=True)
class CheckedRefusal:
    """A refusal that passed: its code and ``"<slug>: <fixed text>"``."""

    code: int
    reason: str


def allow_list(task: Any) -> Mapping[str, Mapping[str, Mapping[str, str]]]:
    """The allow-list of a task's replies (its ``reply_allow_list`` attribute); a task without one has none,
    so every reply of it is refused. A task name is looked up in the task registry."""
    return getattr(_task(task), "reply_allow_list", None) or {}


def _refusal_texts(task: Any) -> Mapping[Refusal, str]:
    return getattr(_task(task), "refusal_reasons", None) or protocol.REFUSAL_REASONS


def _task(task: Any) -> Any:
    if isinstance(task, str):
        from medalloc_core.tasks import get_task

        try:
            return get_task(task)
        except Exception:  # an unknown name: no allow-list
            return None
    return task


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(float(value))


def check_reply(
    task: Any,
    kind: str,
    metrics: Mapping[str, Any],
    arrays: Mapping[str, Any] | None,
    node_info: Mapping[str, Any],
    records: Mapping[str, Mapping[str, Any]] | None = None,
) -> CheckedReply:
    """``metrics``, ``arrays``, ``node_info`` and optional ``records`` of a ``kind`` (``"train"``/``"evaluate"``)
    reply, checked.

    ``records`` are further ConfigRecords, each named on the allow-list among
    ``protocol.OPTIONAL_REPLY_RECORDS``, with only its listed keys; a key listed ``public`` holds text
    or a list of text, a ``post-processing`` key a list of finite numbers.

    Raises ``ReplyNotAllowed`` (naming the key, never its value) for anything not on the list.
    """
    name = getattr(_task(task), "name", str(task))
    allowed = allow_list(task).get(kind)
    if allowed is None:
        raise ReplyNotAllowed(f"task '{name}' has no allow-listed {kind} reply")
    keys = allowed.get(protocol.METRICS, {})
    extra = sorted(set(metrics) - set(keys))
    if extra:
        raise ReplyNotAllowed(f"{name} {kind} reply: metric key(s) {extra} are not on the allow-list")
    missing = sorted(set(keys) - set(metrics))
    if missing:
        raise ReplyNotAllowed(f"{name} {kind} reply: metric key(s) {missing} are missing")
    out: dict[str, int | float | list[float]] = {}
    for key, value in metrics.items():
        if isinstance(value, list) and keys[key] == protocol.POST_PROCESSING:
            # a list of post-processed numbers (the validation loss per block), never a public value
            if len(value) > protocol.MAX_VAL_BLOCKS or not all(_finite(v) for v in value):
                raise ReplyNotAllowed(
                    f"{name} {kind} reply: metric '{key}' is not a list of at most {protocol.MAX_VAL_BLOCKS} numbers"
                )
            out[key] = [float(v) for v in value]
            continue
        if not _finite(value):
            raise ReplyNotAllowed(f"{name} {kind} reply: metric '{key}' is not a finite number")
        out[key] = value
    if arrays is not None and protocol.ARRAYS not in allowed:
        raise ReplyNotAllowed(f"{name} {kind} reply: carries arrays, which this reply may not")
    if arrays is None and protocol.ARRAYS in allowed:
        raise ReplyNotAllowed(f"{name} {kind} reply: the arrays are missing")
    info_keys = allowed.get(protocol.NODE_INFO, {})
    bad = sorted(set(node_info) - set(info_keys))
    if bad or not all(isinstance(v, str) for v in node_info.values()):
        raise ReplyNotAllowed(f"{name} {kind} reply: node-info key(s) {bad} not allowed or not text")
    return CheckedReply(
        out, arrays, {str(k): str(v) for k, v in node_info.items()}, _check_records(name, kind, allowed, records or {})
    )


def _check_records(
    name: str, kind: str, allowed: Mapping[str, Mapping[str, str]], records: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record, values in records.items():
        keys = allowed.get(record)
        if record not in protocol.OPTIONAL_REPLY_RECORDS or keys is None:
            raise ReplyNotAllowed(f"{name} {kind} reply: record '{record}' is not on the allow-list")
        bad = sorted(set(values) - set(keys))
        if bad:
            raise ReplyNotAllowed(f"{name} {kind} reply: {record} key(s) {bad} are not on the allow-list")
        for key, value in values.items():
            items = value if isinstance(value, list) else [value]
            if keys[key] == protocol.PUBLIC:
                ok = all(isinstance(v, str) for v in items)
            else:
                ok = isinstance(value, list) and all(
                    isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(float(v)) for v in items
                )
            if not ok:
                raise ReplyNotAllowed(f"{name} {kind} reply: {record} '{key}' is not of its allowed kind")
        out[str(record)] = dict(values)
    return out


def _pattern(template: str) -> re.Pattern[str]:
    parts = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(r"[^\n]*" if name == "what" else r"[-+0-9.eE]+|inf|nan" if name != "task" else r"[a-z0-9_-]+")
    return re.compile("".join(f"(?:{p})" for p in parts), re.DOTALL)


_PATH = re.compile(r"(?:^|[\s('\"=])(?:/[^\s/]+){2,}|[A-Za-z]:\\\\")


def check_refusal(task: Any, code: Any, detail: str) -> CheckedRefusal:
    """A refusal as it may be sent: a known code with its task's fixed text, else ``node-error``.

    ``detail`` must be the code's ``REFUSAL_REASONS`` text with its placeholders filled (ledger
    numbers, a task name, or a description of the coordinator's own request) and name no local
    path; anything else is logged and replaced by the fixed ``node-error`` reply.
    """
    texts = _refusal_texts(task)
    try:
        refusal = Refusal(int(code))
    except (TypeError, ValueError):
        refusal = None
    if (
        refusal is not None
        and refusal in texts
        and _pattern(texts[refusal]).fullmatch(detail)
        and not _PATH.search(detail)
    ):
        return CheckedRefusal(int(refusal), f"{refusal.slug}: {detail}")
    logger.error("a refusal (code %r) did not match its fixed text; sent as node-error instead", code)
    return node_error()


def node_error() -> CheckedRefusal:
    """The fixed reply for anything the node did not foresee."""
    code = Refusal.NODE_ERROR
    return CheckedRefusal(int(code), f"{code.slug}: {protocol.REFUSAL_REASONS[code]}")
