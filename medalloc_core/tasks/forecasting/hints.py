"""What a forecasting node's log tells its operator: the node-config or run-config key to set, never a Python name.

Core errors speak the library's language (``WindowSpec``, ``epsilon_budget``); an operator
can only change the SuperNode's ``--node-config`` keys or ask the coordinator to change a
run-config key. These helpers turn the node's refusals into lines that name those keys. The
forecasting task logs them when it declines a round; ``medalloc node check`` prints them
before the node joins.
"""

from __future__ import annotations

from pathlib import Path

from medalloc_core.forecast.features import WindowSpec


def data_hint(display: str, data_format: str = "auto", data_mapping: Path | None = None) -> str:
    """How the operator checks and fixes the node's data: the command and the keys involved.

    ``display`` is node-config ``data-path`` as it may be logged (a URL's password hidden).
    """
    mapping = f" --mapping {data_mapping}" if data_mapping else ""
    fmt = f" --format {data_format}" if data_format != "auto" else ""
    return (
        f"check it with `medalloc validate{fmt}{mapping} {display}` and fix the data, or point "
        "node-config 'data-path' (and 'data-format', 'data-mapping') at the right source"
    )


def window_hint(spec: WindowSpec) -> str:
    """What the federation's windows need per unit, in run-config keys and days."""
    history, horizon = spec.history or 0, spec.horizon or 0
    held_out = (spec.val_periods or 0) + (spec.test_periods or 0)
    need = history + horizon + held_out
    return (
        f"the federation's windows (run-config history={history}, horizon={horizon}, plus {held_out} held-out days) "
        f"need at least {need} days per unit; ask the coordinator for a shorter 'history' or 'horizon', "
        "or join when every unit has that much history (`medalloc node check` shows it before joining)"
    )


def ledger_hint(ledger_path: Path, *, accountant: str, delta: float, epsilon_budget: float) -> str:
    """For a ledger that disagrees with the node config: which node-config key to set to what.

    The ledger's budget, delta and accountant are fixed when it is created; the node config
    must repeat them. Reads the ledger (read-only) to name the differing key and its value.
    """
    from medalloc_core.privacy.ledger import LedgerError, PrivacyLedger

    try:
        ledger = PrivacyLedger.load(ledger_path)
    except (LedgerError, OSError):
        return (
            f"the ledger named by node-config 'ledger-path' ({ledger_path}) cannot be read: restore it "
            "(docs/privacy.md); never delete it"
        )
    fixes = []
    if ledger.accountant != accountant:
        fixes.append(f"privacy-accountant='{ledger.accountant}'")
    if ledger.delta != delta:
        fixes.append(f"privacy-delta={ledger.delta:g}")
    if ledger.epsilon_budget != epsilon_budget:
        fixes.append(f"privacy-epsilon-budget={ledger.epsilon_budget:g}")
    if not fixes:
        return "see `medalloc privacy --ledger " + str(ledger_path) + "`"
    return (
        "set node-config " + " ".join(fixes) + " (the values this ledger was created with; a different budget "
        "is a governance decision, docs/privacy.md, never an edit of the ledger)"
    )
