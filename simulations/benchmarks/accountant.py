"""Accountant benchmark: the ledger's epsilon vs independent computations, and PRV vs RDP."""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from rich.console import Console
from rich.table import Table

from medalloc_core.privacy.accounting import AccountantName
from medalloc_core.privacy.ledger import PrivacyLedger

# Opacus' standard orders, written out so the reference does not go through our module.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
FINGERPRINT = "sha256:" + "0" * 64

# The grid spans MedAlloc's range: a hospital unit has ~600 daily windows over two years, a
# batch of 16-32 windows gives q ~ 0.01-0.05, and 20 rounds x 1-5 local epochs give
# ~400-5000 steps over the node's life.
NOISES = (0.8, 1.0, 1.5)
SAMPLE_RATES = (0.01, 0.05)
STEPS = (100, 1000, 4000)
DELTAS = (1e-5, 1e-7)


def independent_rdp(noise: float, rate: float, steps: int, delta: float) -> float:
    """Epsilon straight from Opacus' RDP analysis functions (no MedAlloc code)."""
    rdp = np.asarray(compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=ORDERS))
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def google_pld(noise: float, rate: float, steps: int, delta: float) -> float | None:
    """Google dp_accounting's PLD epsilon, if that package happens to be installed."""
    try:
        import dp_accounting
    except ImportError:
        return None
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps
    )
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def ledger_epsilon(
    directory: Path, accountant: AccountantName, noise: float, rate: float, steps: int, delta: float
) -> float:
    """Epsilon recorded by a fresh PrivacyLedger for one spend."""
    path = directory / f"{accountant}-{noise}-{rate}-{steps}-{delta}.json"
    ledger = PrivacyLedger.open(path, epsilon_budget=1e6, delta=delta, accountant=accountant)
    return ledger.spend(FINGERPRINT, noise_multiplier=noise, sample_rate=rate, steps=steps, run_id="bench")


def main() -> None:
    """Run the grid and print one table of epsilons and ratios."""
    console = Console()
    table = Table(title="Ledger epsilon vs independent accountants (ratios: 1.000 = identical)")
    for column in (
        "σ",
        "q",
        "steps",
        "δ",
        "ε RDP (Opacus fn)",
        "ledger rdp / RDP",
        "ε ledger prv",
        "prv / RDP",
        "PLD (dp_accounting)",
        "prv s",
    ):
        table.add_column(column, justify="right")
    ratios: list[float] = []
    rdp_agreement: list[float] = []
    have_pld = False
    grid = list(itertools.product(NOISES, SAMPLE_RATES, STEPS, DELTAS))
    with tempfile.TemporaryDirectory() as tmp, console.status("accounting...") as status:
        for i, (noise, rate, steps, delta) in enumerate(grid, 1):
            status.update(f"accounting {i}/{len(grid)}")
            reference = independent_rdp(noise, rate, steps, delta)
            via_rdp = ledger_epsilon(Path(tmp), "rdp", noise, rate, steps, delta)
            start = time.perf_counter()
            via_prv = ledger_epsilon(Path(tmp), "prv", noise, rate, steps, delta)
            prv_seconds = time.perf_counter() - start
            pld = google_pld(noise, rate, steps, delta)
            have_pld |= pld is not None
            ratios.append(via_prv / reference)
            rdp_agreement.append(via_rdp / reference)
            table.add_row(
                f"{noise:g}",
                f"{rate:g}",
                str(steps),
                f"{delta:g}",
                f"{reference:.3f}",
                f"{via_rdp / reference:.6f}",
                f"{via_prv:.3f}",
                f"{via_prv / reference:.3f}",
                "—" if pld is None else f"{pld:.3f}",
                f"{prv_seconds:.2f}",
            )
    console.print(table)
    console.print(f"ledger (rdp) vs Opacus RDP functions: max |ratio-1| = {max(abs(r - 1) for r in rdp_agreement):.2e}")
    console.print(
        f"PRV/RDP over {len(ratios)} settings: mean {statistics.mean(ratios):.3f}, "
        f"min {min(ratios):.3f}, max {max(ratios):.3f} (PRV is the ledger's default: "
        f"{(1 - statistics.mean(ratios)) * 100:.1f}% tighter on average)"
    )
    if not have_pld:
        console.print(
            "dp_accounting is not installed here (it is on PyPI: dp-accounting 0.6.0); "
            "install it in a separate environment to fill the PLD column."
        )


if __name__ == "__main__":
    main()
