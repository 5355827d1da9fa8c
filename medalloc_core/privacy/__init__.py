"""Privacy accounting and the node's persistent privacy ledger."""

from medalloc_core.privacy.accounting import TargetUnreachable, epsilon_for, noise_multiplier_for
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import (
    LedgerConfigMismatch,
    LedgerCorrupt,
    LedgerError,
    LedgerMissing,
    PrivacyBudgetExceeded,
    PrivacyLedger,
)

__all__ = [
    "LedgerConfigMismatch",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerMissing",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "TargetUnreachable",
    "epsilon_for",
    "fingerprint_frame",
    "noise_multiplier_for",
]
