"""`medalloc share`: the DP-noised census quantiles a hospital sends the coordinator, charged to its privacy ledger."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.data_option import MAPPING_HELP, is_path_input, one_line, read_records
from medalloc_core.contract import DataContractError

# One release at a larger epsilon gives no meaningful protection, and exp(epsilon) overflows
# a float past 709: refuse rather than compute nonsense.
MAX_SHARE_EPSILON = 100.0
_out = Console()
_err = Console(stderr=True)


def _fail(message: str) -> None:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _identity(
    node_config: Path | None, hospital: str | None, ledger: Path | None
) -> tuple[str | None, Path, Path | None]:
    """The label of the shared table, the ledger and the site mapping: --hospital / --ledger, else the node
    config's hospital-id / ledger-path (the same id the node trains and refuses under) and its data-mapping."""
    node_id, node_ledger, node_mapping = None, None, None
    if node_config is not None:
        from medalloc.cli.node_files import read_node_config

        try:  # read as a regular file only: a FIFO given as node.toml would block read_text for ever
            config = read_node_config(node_config)
        except ValueError as exc:
            _fail(str(exc))
        node_id, node_ledger, node_mapping = config.hospital_id, config.ledger_path, config.data_mapping
    if hospital is not None and not hospital.strip():
        _fail("--hospital must not be empty")
    resolved = ledger or node_ledger
    if resolved is None:
        _fail("give --ledger (the node's privacy ledger) or --node-config (its ledger-path)")
    assert resolved is not None
    return (hospital or node_id), resolved, node_mapping


def share(
    forecast: Path = typer.Option(..., "--forecast", help="This hospital's forecast.csv (from `medalloc forecast`)."),
    data: str = typer.Option(
        ...,
        "--data",
        help="The records the forecast was made from (a file, OMOP database or FHIR export, read as the node "
        "reads it); their fingerprint keys the ledger entry.",
        show_default=False,
    ),
    mapping: Path | None = typer.Option(
        None, "--mapping", help=MAPPING_HELP + " Default: the --node-config's data-mapping."
    ),
    ledger: Path | None = typer.Option(
        None, "--ledger", help="This node's privacy ledger (default: the node config's ledger-path)."
    ),
    node_config: Path | None = typer.Option(
        None,
        "--node-config",
        help="The node's node.toml: the shared table is labelled with its hospital-id (the name the "
        "coordinator's capacity table uses), and its ledger-path is the default --ledger.",
    ),
    hospital: str | None = typer.Option(
        None, "--hospital", help="The hospital's id in the shared table (default: the node config's hospital-id)."
    ),
    epsilon: float = typer.Option(..., "--epsilon", help="Epsilon of this release alone."),
    delta: float | None = typer.Option(None, "--delta", help="Delta; must equal the ledger's (default: the ledger's)."),
    sensitivity: float = typer.Option(
        1.0, "--sensitivity", help="How much one patient moves one shared number (beds)."
    ),
    out: Path = typer.Option(Path("shared.csv"), "--out", "-o", help="The table to send: hospital, date, q, value."),
    epsilon_budget: float | None = typer.Option(
        None, "--epsilon-budget", help="Create the ledger with this budget if it does not exist yet."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Only for experiments: a known seed makes the noise removable."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Add Gaussian DP noise to your census quantiles for the regional plan and record the epsilon in your ledger."""
    from medalloc_core.allocation.forecast_io import read_forecast
    from medalloc_core.allocation.regional import write_shared
    from medalloc_core.allocation.sharing import share_with_ledger
    from medalloc_core.privacy.accounting import TargetUnreachable
    from medalloc_core.privacy.fingerprint import fingerprint_frame
    from medalloc_core.privacy.ledger import LedgerError, PrivacyLedger
    from medalloc_core.privacy.source_registry import check_source_ledger

    label, ledger, node_mapping = _identity(node_config, hospital, ledger)
    if out.resolve() in {p.resolve() for p in (forecast, is_path_input(data), ledger) if p is not None}:
        _fail(f"{out} is one of the inputs; choose another --out")
    if out.exists() and not force:
        _fail(f"{out} already exists; pass --force to replace it (and spend epsilon again), or choose another --out")
    if not 0 < epsilon <= MAX_SHARE_EPSILON:
        _fail(
            f"--epsilon must be a number in (0, {MAX_SHARE_EPSILON:g}], got {epsilon}; "
            "one release above that protects nothing"
        )
    if not 0 < sensitivity < math.inf:
        _fail(f"--sensitivity must be a finite number > 0 (beds one patient moves), got {sensitivity}")
    if delta is not None and not 0 < delta < 1:
        _fail(f"--delta must be in (0, 1), got {delta}")
    if epsilon_budget is not None and not 0 < epsilon_budget < math.inf:
        _fail(f"--epsilon-budget must be a finite number > 0, got {epsilon_budget}")
    try:
        frame = read_forecast(forecast)
        if frame["hospital"].nunique() != 1:
            raise ValueError(f"{forecast} holds {frame['hospital'].nunique()} hospitals; share one hospital's forecast")
        if label:  # one identity from the node to the regional plan: the node's hospital-id
            frame = frame.assign(hospital=label)
        fingerprint = fingerprint_frame(read_records(data, mapping or node_mapping).records.frame)
        if ledger.exists() or epsilon_budget is None:
            node = PrivacyLedger.load(ledger)
        else:
            node = PrivacyLedger.open(
                ledger,
                epsilon_budget=epsilon_budget,
                delta=1e-6 if delta is None else delta,
                unit="patient",
                max_stay_days=14,
            )
        check_source_ledger(str(data), ledger, node.ledger_id)  # a fresh --ledger on a node's data is refused
        if delta is not None and delta != node.delta:
            raise ValueError(
                f"--delta {delta:g} differs from the ledger's delta {node.delta:g}; "
                "epsilons at different deltas do not compose"
            )
        first, last = frame["date"].min().date(), frame["date"].max().date()
        result = share_with_ledger(
            frame,
            ledger=node,
            fingerprint=fingerprint,
            epsilon=epsilon,
            sensitivity=sensitivity,
            seed=seed,
            run_id=f"share:{frame['hospital'].iloc[0]}:{first}..{last}",
        )
    except LedgerError as exc:
        _fail(f"{exc}\nNothing was shared.")
        return
    except DataContractError as exc:
        _fail(f"{one_line(data, exc)}; nothing was shared")
        return
    except (ValueError, TargetUnreachable) as exc:
        _fail(f"{exc}\nNothing was shared.")
        return
    try:
        # the noise sd is public (epsilon, delta, sensitivity, count): the coordinator plans knowing it
        write_shared(result.shared.assign(noise_sd=round(float(result.sigma), 6)), out, overwrite=force)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc} (the epsilon is already recorded in {ledger})")
    _out.print(
        f"shared {result.n_values} numbers with Gaussian noise σ={result.sigma:.2f} beds each "
        f"(noise multiplier {result.noise_multiplier:.4g} at sample rate 1, one step).\n"
        f"this release: ε={result.epsilon_release:.3f} at δ={node.delta:g}; "
        f"node total now ε={result.epsilon_node_after:.3f} "
        f"of {node.epsilon_budget:g} (see `medalloc privacy --ledger {ledger}`).\nwrote {out}",
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add `share` to the medalloc app."""
    app.command("share")(share)
