"""``medalloc node check``: everything a hospital node will use, checked before it joins a federation.

Each check is a :class:`Finding` (section, item, status, what was found and, when it is not
OK, what to set or do). Nothing is written: the data source is opened read-only, the ledger
is read, not opened for spending, and the SuperLink is only dialled (a TLS handshake) when
asked to.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medalloc.client.config import NodeConfig, NodeConfigError
from medalloc_core.contract import Frequency
from medalloc_core.forecast.features import WindowSpec, federation_window_spec, prepare_hospital
from medalloc_core.paths import read_regular_bytes
from medalloc_core.sources import load_source
from medalloc_core.tasks.forecasting.hints import data_hint as _data_hint
from medalloc_core.tasks.forecasting.hints import window_hint

from .approved import ApprovalError, read_approved

Status = Literal["ok", "warn", "fail"]
CERT_WARN_DAYS = 30  # a CA certificate expiring within a month: renew it before the federation does
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    """One line of the check: ``fix`` says which key to set or what to do when ``status`` is not ok."""

    section: str
    item: str
    status: Status
    text: str
    fix: str = ""


@dataclass
class NodeCheck:
    """The findings, in order; ``ok`` when none failed."""

    findings: list[Finding] = field(default_factory=list)

    def add(self, section: str, item: str, status: Status, text: str, fix: str = "") -> None:
        self.findings.append(Finding(section, item, status, text, fix))

    @property
    def ok(self) -> bool:
        return all(f.status != "fail" for f in self.findings)


def check_node(
    node_config: Mapping[str, Any],
    *,
    superlink: str | None,
    root_certificates: Path | None,
    private_key: Path | None,
    spec: WindowSpec,
    connect: bool = True,
) -> NodeCheck:
    """Check what a SuperNode started with these options would use.

    Parameters
    ----------
    node_config
        The SuperNode's ``--node-config`` keys (kebab-case).
    superlink, root_certificates, private_key
        The SuperNode's ``--superlink``, ``--root-certificates`` and
        ``--auth-supernode-private-key``.
    spec
        The federation's windows (run-config ``history``, ``horizon``, ``targets``).
    connect
        Dial the SuperLink and check its certificate against ``root_certificates``.
    """
    result = NodeCheck()
    try:
        node = NodeConfig.from_node_config(node_config)  # the ClientApp's own reading of the keys
    except NodeConfigError as exc:
        result.add("node config", "keys", "fail", str(exc), "fix the key named in the node config")
        node = None
    except (TypeError, ValueError) as exc:
        result.add("node config", "keys", "fail", f"{type(exc).__name__}: {exc}", "fix the node config")
        node = None
    if node is not None:
        result.add(
            "node config",
            "hospital",
            "ok",
            f"hospital-id {node.hospital_id}, max-local-epochs {node.max_local_epochs}, "
            f"min-noise-multiplier {node.min_noise_multiplier:g}, max-grad-norm {node.max_grad_norm:g}",
        )
        _data(result, node, spec)
        _privacy(result, node)
        _approved(result, node)
    _superlink(result, superlink, root_certificates, connect)
    _key(result, private_key)
    return result


# ---------------------------------------------------------------------- data
def _data(result: NodeCheck, node: NodeConfig, spec: WindowSpec) -> None:
    section = "data"
    try:
        source = node.data_source
    except NodeConfigError as exc:
        result.add(section, "mapping", "fail", str(exc), "fix the file named by node-config 'data-mapping'")
        return
    result.add(section, "source", "ok", f"{source.display} ({source.kind()}, node-config 'data-path')")
    if node.data_mapping:
        result.add(section, "mapping", "ok", f"{node.data_mapping} (node-config 'data-mapping')")
    try:
        data = load_source(source)
    except Exception as exc:  # noqa: BLE001 - DataContractError and anything unforeseen: one failed line
        problems = getattr(exc, "problems", None)
        if problems:
            errors = [p for p in problems if p.severity == "error"]
            shown = "; ".join(str(p) for p in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            result.add(
                section,
                "validation",
                "fail",
                f"{len(errors)} error(s): {shown}{more}",
                _data_hint(node.data_source_display, node.data_format, node.data_mapping),
            )
        else:
            result.add(
                section,
                "validation",
                "fail",
                f"{type(exc).__name__}: {exc}",
                _data_hint(node.data_source_display, node.data_format, node.data_mapping),
            )
        return
    summary = data.report.summary
    units = summary.get("units", [])
    text = (
        f"valid: {summary.get('format')}, {len(units)} unit(s) ({', '.join(map(str, units))}), "
        f"{summary.get('date_start')} .. {summary.get('date_end')}"
    )
    if "encounters" in summary:
        text += f", {summary['encounters']:,} stays ({summary['open_stays']:,} open)"
    warnings = data.report.warnings
    result.add(
        section,
        "validation",
        "warn" if warnings else "ok",
        text + (f"; {len(warnings)} warning(s), first: {warnings[0]}" if warnings else ""),
        "see `medalloc validate` for every warning" if warnings else "",
    )
    for label, detail in summary.get("details", []):
        result.add(section, str(label), "ok", str(detail))
    _calendar(result, node, data.stays, data.records)
    if data.records.frequency is not Frequency.DAILY:
        result.add(
            section,
            "windows",
            "fail",
            "the records are weekly; the federation's model is daily",
            _data_hint(node.data_source_display, node.data_format, node.data_mapping),
        )
        return
    resolved = spec.resolved(Frequency.DAILY)
    assert resolved.history and resolved.horizon and resolved.val_periods and resolved.test_periods
    need = resolved.history + resolved.horizon + resolved.val_periods + resolved.test_periods
    days = data.records.frame.groupby("unit")["date"].agg(lambda d: (d.max() - d.min()).days + 1)
    short = days[days < need]
    shortest = f"shortest unit {days.idxmin()} has {int(days.min())} days" if len(days) else "no unit"
    if len(short):
        names = ", ".join(f"{unit} {int(n)}" for unit, n in short.items())
        result.add(
            section, "history", "fail", f"too short: {need} days needed per unit; days: {names}", window_hint(resolved)
        )
        return
    try:
        dataset = prepare_hospital(data.records, spec)
    except ValueError as exc:
        result.add(section, "history", "fail", f"cannot be windowed: {exc}", window_hint(resolved))
        return
    result.add(
        section,
        "history",
        "ok",
        f"long enough: {shortest}, {need} needed (history {resolved.history}, horizon {resolved.horizon}, "
        f"{resolved.val_periods} + {resolved.test_periods} held out); windows train {len(dataset.train):,}, "
        f"validation {len(dataset.val):,}, test {len(dataset.test):,}",
    )


def _calendar(result: NodeCheck, node: NodeConfig, stays: Any, records: Any) -> None:
    """The node's public calendar (issue 20): a deployed node refuses every round without one, stays or counts."""
    from medalloc_core.contract import ADMIT_TIME, DISCHARGE_TIME, UNIT
    from medalloc_core.privacy.calendar import CalendarError, declared_parts, suggested_calendar
    from medalloc_core.tasks import get_task

    extra = next(s.extra for name, s in node.tasks.items() if get_task(name).reads_data_sources)
    keys = ("calendar-units", "calendar-start", "calendar-end")
    try:
        units, start, end = declared_parts(extra)
    except CalendarError as exc:
        result.add("data", "calendar", "fail", str(exc), "fix the node-config key it names")
        return
    if units is not None and start is not None and end is not None:
        result.add(
            "data",
            "calendar",
            "ok",
            f"declared: {len(units)} unit(s) ({', '.join(units)}), {start:%Y-%m-%d} .. {end:%Y-%m-%d}; stays "
            "outside it are left out",
        )
        return
    import pandas as pd

    if stays is None:  # daily counts: which rows the export wrote can depend on the counts
        days = records.frame["date"]
        suggested = suggested_calendar(first_event=days.min(), last_event=days.max(), data_units=records.units)
    else:
        events = pd.concat([pd.to_datetime(stays[ADMIT_TIME]), pd.to_datetime(stays[DISCHARGE_TIME])]).dropna()
        suggested = suggested_calendar(
            first_event=events.min(), last_event=events.max(), data_units=stays[UNIT].astype(str).unique()
        )
    missing = [k for k, v in zip(keys, (units, start, end), strict=True) if v is None]
    result.add(
        "data",
        "calendar",
        "fail",
        f"not declared ({', '.join(missing)} missing): a deployed node refuses every round without its "
        "calendar, so that no one patient can change what it reports (docs/privacy.md, 'What is public')",
        "set node-config " + " ".join(f'{k}="{suggested[k]}"' for k in missing) + " (what the data spans, in "
        "whole months: check it against what your hospital may publish)",
    )


# ---------------------------------------------------------------------- privacy
def _privacy(result: NodeCheck, node: NodeConfig) -> None:
    from medalloc_core.privacy.ledger import LedgerError, PrivacyLedger

    section = "privacy"
    result.add(
        section,
        "budget",
        "ok",
        f"privacy-epsilon-budget {node.epsilon_budget:g} at privacy-delta {node.delta:g}, accountant "
        f"{node.accountant} (node config)",
    )
    path = node.ledger_path
    if not path.exists():
        folder = path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            result.add(
                section,
                "ledger",
                "fail",
                f"{path}: no ledger yet, and its folder {folder} does not exist or is not writable",
                "create the folder (writable by the node's account) or set node-config 'ledger-path'",
            )
        else:
            result.add(section, "ledger", "ok", f"{path}: none yet; the first round creates it (nothing spent)")
        return
    try:
        ledger = PrivacyLedger.load(path)
    except LedgerError as exc:
        result.add(
            section,
            "ledger",
            "fail",
            f"{path}: {type(exc).__name__}: {exc}",
            "the node trains nothing until the ledger is restored (docs/privacy.md); never delete it",
        )
        return
    spent, left = ledger.epsilon_spent(), ledger.remaining()
    status: Status = "ok"
    fix = ""
    if abs(ledger.epsilon_budget - node.epsilon_budget) > 1e-12:
        status, fix = "fail", f"set node-config privacy-epsilon-budget={ledger.epsilon_budget:g} (the ledger's budget)"
    elif ledger.accountant != node.accountant:
        status, fix = "fail", f"set node-config privacy-accountant='{ledger.accountant}' (the ledger's accountant)"
    elif left <= 0:
        status, fix = "fail", "the budget is spent: the node will refuse every round"
    result.add(
        section,
        "ledger",
        status,
        f"{path}: budget {ledger.epsilon_budget:g}, spent {spent:.3f}, left {left:.3f} over "
        f"{len(ledger.history())} spend(s)",
        fix,
    )


# ---------------------------------------------------------------------- approved apps
def _approved(result: NodeCheck, node: NodeConfig) -> None:
    section = "apps"
    if node.approved_apps is None:
        result.add(
            section,
            "approved",
            "fail",
            "no approved-apps list: the node would run whatever app the coordinator sends",
            "set node-config 'approved-apps' and add your data owner's approvals with `medalloc node approve`",
        )
        return
    try:
        apps = read_approved(node.approved_apps)
    except ApprovalError as exc:
        result.add(section, "approved", "fail", str(exc), "fix or recreate it with `medalloc node approve`")
        return
    if not apps:
        result.add(
            section,
            "approved",
            "fail",
            f"{node.approved_apps}: no app approved; every round would be refused",
            "add one with `medalloc node approve`",
        )
        return
    result.add(section, "approved", "ok", f"{node.approved_apps} (node-config 'approved-apps'): {len(apps)} app(s)")
    for app in apps:
        who = f", approved by {app.approved_by}" if app.approved_by else ""
        when = f" on {app.approved_at}" if app.approved_at else ""
        result.add(section, "sha256", "ok", f"{app.sha256} {app.name}{who}{when}".strip())


# ---------------------------------------------------------------------- SuperLink and key
def _superlink(result: NodeCheck, address: str | None, ca: Path | None, connect: bool) -> None:
    section = "superlink"
    if not address:
        result.add(section, "address", "fail", "no --superlink given", "pass the coordinator's address, HOST:PORT")
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        result.add(section, "address", "fail", f"{address!r} is not HOST:PORT", "pass e.g. superlink.example.org:9092")
        return
    result.add(section, "address", "ok", address)
    if ca is None:
        result.add(
            section,
            "certificate",
            "fail",
            "no --root-certificates: the node could not tell the real coordinator from an impostor",
            "pass the federation's ca.crt from your coordinator",
        )
        return
    try:
        from cryptography import x509

        certificate = x509.load_pem_x509_certificate(read_regular_bytes(ca, limit=2**20, what="a PEM certificate"))
    except OSError as exc:
        result.add(section, "certificate", "fail", f"{ca}: cannot be read ({exc.strerror or exc})", "check the path")
        return
    except ValueError as exc:
        result.add(section, "certificate", "fail", f"{ca}: not a PEM certificate ({exc})", "ask for ca.crt again")
        return
    from cryptography.hazmat.primitives import hashes

    fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    expires = certificate.not_valid_after_utc
    days_left = (expires - dt.datetime.now(dt.UTC)).days
    status: Status = "fail" if days_left < 0 else "warn" if days_left < CERT_WARN_DAYS else "ok"
    result.add(
        section,
        "certificate",
        status,
        f"{ca}: {certificate.subject.rfc4514_string()}, SHA-256 {fingerprint}, valid until {expires:%Y-%m-%d} "
        f"({days_left} days)",
        "" if status == "ok" else "ask the coordinator for a renewed ca.crt",
    )
    if not connect:
        result.add(section, "connection", "warn", "not dialled (--offline)")
        return
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as sock:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                peer = tls.getpeercert() or {}
        subject = ", ".join("=".join(pair) for rdn in peer.get("subject", ()) for pair in rdn)
        result.add(
            section,
            "connection",
            "ok",
            f"TLS to {address} verified with {ca.name}: server {subject or '?'}, "
            f"valid until {peer.get('notAfter', '?')}",
        )
    except ssl.SSLCertVerificationError as exc:
        result.add(
            section,
            "connection",
            "fail",
            f"{address} presents a certificate {ca.name} does not vouch for ({exc.verify_message})",
            "check --superlink and --root-certificates with your coordinator",
        )
    except (OSError, ssl.SSLError) as exc:
        result.add(
            section,
            "connection",
            "fail",
            f"cannot reach {address}: {exc}",
            "check the address, your firewall (outgoing HTTPS), and that the coordinator is up",
        )


def _key(result: NodeCheck, private_key: Path | None) -> None:
    section = "node key"
    if private_key is None:
        result.add(
            section,
            "private key",
            "warn",
            "no --auth-supernode-private-key: only for a federation without node authentication",
        )
        return
    try:
        mode = stat.S_IMODE(os.stat(private_key).st_mode)
        public = read_regular_bytes(str(private_key) + ".pub", limit=2**20, what="a public key")
    except OSError as exc:
        result.add(
            section,
            "private key",
            "fail",
            f"{private_key} or its .pub: {exc.strerror or exc}",
            "make the pair with `python -m medalloc.client.keys --out KEYPATH`",
        )
        return
    from medalloc.client.keys import fingerprint

    status: Status = "ok" if mode & 0o077 == 0 else "fail"
    result.add(
        section,
        "private key",
        status,
        f"{private_key} (mode {mode:o}), public key {fingerprint(public)}",
        "" if status == "ok" else f"chmod 600 {private_key}: other accounts must not read the node's key",
    )


def window_spec(history: int, horizon: int, targets: str) -> WindowSpec:
    """The federation's window spec from its run-config keys."""
    return federation_window_spec(
        history=history, horizon=horizon, targets=tuple(t.strip() for t in targets.split(",") if t.strip())
    )
