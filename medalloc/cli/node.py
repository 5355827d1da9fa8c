"""``medalloc node``: a hospital node its data owner controls — approve apps, run only those, check before joining.

- ``medalloc node approve``: add an app's FAB hash (built from a reviewed source folder, a
  ``.fab`` file, or given) to the node's approved-apps file.
- ``medalloc node hash``: print the FAB hash ``flwr run`` submits for a source folder (for a
  coordinator to publish with a release).
- ``medalloc node start``: the SuperNode and that gate together, as one command.
- ``medalloc node exec``: the SuperExec for ``flower-supernode --isolation process`` that runs
  only approved apps.
- ``medalloc node check``: what the node will use, checked; exit 2 when anything is wrong.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.tables import Table
from medalloc_core.paths import read_regular_bytes, why_not_a_file

EXIT_INVALID = 2
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}

node_app = typer.Typer(
    name="node",
    help="A hospital node its data owner controls: approved apps only, checked before joining (docs/hospital.md).",
    no_args_is_help=True,
)

_MAX_FAB_BYTES = 256 * 2**20  # far above any app bundle


def _fail(message: str) -> NoReturn:
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(EXIT_INVALID)


def _node_config(value: str) -> dict[str, Any]:
    """``--node-config`` as flower-supernode reads it: a TOML file path or ``key=value`` pairs."""
    from flwr.common.config import parse_config_args

    if value.endswith(".toml") and not Path(value).expanduser().is_file():
        _fail(f"--node-config {value}: {why_not_a_file(Path(value).expanduser())}")
    try:
        return dict(parse_config_args([value]))
    except Exception as exc:  # noqa: BLE001 - TOML or key=value syntax errors: one line, exit 2
        _fail(f"--node-config {value}: cannot be read ({getattr(exc, 'message', None) or exc})")


# ---------------------------------------------------------------------- approve / hash
@node_app.command("approve")
def approve(
    approved_apps: Path = typer.Option(
        ..., "--approved-apps", help="The node's approved-apps file (created if missing)."
    ),
    app: Path | None = typer.Option(None, "--app", help="A reviewed app source folder (the one with pyproject.toml)."),
    fab: Path | None = typer.Option(None, "--fab", help="A .fab file (Flower App Bundle) instead of a folder."),
    sha256: str | None = typer.Option(None, "--sha256", help="A FAB hash you verified otherwise."),
    by: str = typer.Option("", "--by", help="Who approves (recorded with the hash), e.g. 'J. Smith, DPO'."),
) -> None:
    """Approve one app version: its FAB hash goes into the approved-apps file the node enforces."""
    from medalloc.node.approved import ApprovalError, ApprovedApp, add_approved, fab_name, fab_of_app, now
    from medalloc.node.approved import sha256 as digest
    from medalloc.node.installed import save_manifest

    given = [x for x in (app, fab, sha256) if x is not None]
    if len(given) != 1:
        _fail("give exactly one of --app FOLDER, --fab FILE or --sha256 HASH")
    name = ""
    if app is not None:
        if not (app / "pyproject.toml").is_file():
            _fail(f"--app {app}: no pyproject.toml there; give the app's source folder")
        try:
            data, name = fab_of_app(app)
        except Exception as exc:  # noqa: BLE001 - Flower's builder raises click/ValueError: one line
            _fail(f"--app {app}: cannot be built into a FAB ({getattr(exc, 'message', None) or exc})")
        value = digest(data)
    elif fab is not None:
        try:
            data = read_regular_bytes(fab, limit=_MAX_FAB_BYTES, what="a .fab file")
        except OSError as exc:
            _fail(f"--fab {fab}: cannot be read ({exc.strerror or exc})")
        value, name = digest(data), fab_name(data)
    else:
        assert sha256 is not None
        if not _HEX64.match(sha256):
            _fail(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
        value = sha256.lower()
    try:
        added = add_approved(approved_apps, ApprovedApp(value, name, by, now()))
        if sha256 is None:  # the FAB's files, so the gate can check the installed copy before every run
            save_manifest(approved_apps, value, data)
    except (ApprovalError, OSError, ValueError) as exc:
        _fail(str(exc))
    console = Console(soft_wrap=True, highlight=False)
    verb = "approved" if added else "already approved"
    console.print(f"{verb}: sha256 {value} {escape(name)}")
    console.print(f"in {escape(str(approved_apps))}")


@node_app.command("hash")
def fab_hash(app: Path = typer.Option(Path("."), "--app", help="The app's source folder.")) -> None:
    """Print the FAB hash `flwr run` submits for this source folder (publish it with a release)."""
    from medalloc.node.approved import fab_of_app, sha256

    if not (app / "pyproject.toml").is_file():
        _fail(f"--app {app}: no pyproject.toml there; give the app's source folder")
    try:
        data, name = fab_of_app(app)
    except Exception as exc:  # noqa: BLE001 - see approve
        _fail(f"--app {app}: cannot be built into a FAB ({getattr(exc, 'message', None) or exc})")
    Console(soft_wrap=True, highlight=False).print(f"{sha256(data)}  {escape(name)}")


# ---------------------------------------------------------------------- exec
@node_app.command("exec")
def node_exec(
    node_config: str = typer.Option(..., "--node-config", help="The node's config (TOML file or key=value pairs)."),
    runtime_api_address: str = typer.Option(
        "127.0.0.1:9094", "--runtime-api-address", help="The SuperNode's Runtime API (its --port)."
    ),
    root_certificates: Path | None = typer.Option(
        None, "--root-certificates", help="CA of the Runtime API when the SuperNode serves it with TLS."
    ),
    parent_pid: int | None = typer.Option(None, "--parent-pid", help="Exit when this process (the SuperNode) exits."),
    warm: bool = typer.Option(
        True, "--warm/--no-warm", help="Fork each approved message's process from a warm launcher (default)."
    ),
) -> None:
    """Run approved apps only: the SuperExec for `flower-supernode --isolation process`.

    Every round's app is checked against node-config 'approved-apps' before anything of it is
    installed; an app not on the list is answered with 'app-not-approved' and never runs. An
    approved message runs in a fresh process forked from a launcher that has imported PyTorch,
    pandas and Flower once (--no-warm: a fresh flwr-clientapp, as Flower starts it).
    """
    from medalloc.node.approved import ApprovalError, read_approved
    from medalloc.node.gate import run_gated_superexec

    keys = _node_config(node_config)
    if not keys.get("approved-apps"):
        _fail("the node config has no 'approved-apps'; set it to the file `medalloc node approve` writes")
    approved = Path(str(keys["approved-apps"]))
    try:
        apps = read_approved(approved)
    except ApprovalError as exc:
        _fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    logging.getLogger("flwr").propagate = False  # Flower's own handler writes its lines (INFO and up) once
    logging.getLogger("medalloc.node.gate").info(
        "running only the %d app(s) approved in %s (node-config 'approved-apps'): %s",
        len(apps),
        approved,
        ", ".join(a.sha256[:12] for a in apps) or "none",
    )
    run_gated_superexec(
        approved_apps=approved,
        runtime_api_address=runtime_api_address,
        insecure=root_certificates is None,
        root_certificates=str(root_certificates) if root_certificates else None,
        parent_pid=parent_pid,
        warm=warm,
    )


# ---------------------------------------------------------------------- start
@node_app.command("start", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def start(
    ctx: typer.Context,
    node_config: str = typer.Option(..., "--node-config", help="The node's config (TOML file or key=value pairs)."),
    port: int = typer.Option(9094, "--port", help="The SuperNode's Runtime API port on 127.0.0.1."),
    retries: int = typer.Option(
        0, "--retries", help="Restarts after the SuperNode could not connect or was killed (0: no limit)."
    ),
    max_backoff: float = typer.Option(60.0, "--max-backoff", help="Longest wait between restarts, seconds."),
    poll_interval: float = typer.Option(
        0.5, "--poll-interval", help="Seconds the SuperNode waits between pulls for messages (Flower: 3)."
    ),
    warm: bool = typer.Option(
        True, "--warm/--no-warm", help="Fork each approved message's process from a warm launcher (default)."
    ),
) -> None:
    """Start the SuperNode with the approved-apps gate: flower-supernode --isolation process + medalloc node exec.

    Every other option goes to flower-supernode as given (--superlink, --root-certificates,
    --auth-supernode-private-key, ...). A SuperNode that could not connect (Exit Code 305: the
    SuperLink is down, or still counts this node online for up to 2 x 30 s after a kill) or was
    killed is started again after a backoff (5 s, doubling, at most --max-backoff), saying what
    it waits for. Other exits end both, with the SuperNode's status.
    """
    import os

    from medalloc.node.approved import ApprovalError, read_approved
    from medalloc.node.supervisor import RetryPolicy, gate_argv, supernode_argv, supervise

    keys = _node_config(node_config)
    if not keys.get("approved-apps"):
        _fail("the node config has no 'approved-apps'; set it to the file `medalloc node approve` writes")
    try:
        read_approved(Path(str(keys["approved-apps"])))
    except ApprovalError as exc:
        _fail(str(exc))
    if not 0 < port < 65536:
        _fail(f"--port must be a TCP port, got {port}")
    if not 0 < poll_interval <= 60:
        _fail(f"--poll-interval must be between 0 and 60 seconds, got {poll_interval}")
    try:
        supernode = supernode_argv(ctx.args, node_config=node_config, port=port, poll_interval=poll_interval)
    except ValueError as exc:
        _fail(str(exc))
    try:
        retry = RetryPolicy(retries=retries, max_backoff_s=max_backoff, first_backoff_s=min(5.0, max_backoff))
    except ValueError as exc:
        _fail(f"--retries/--max-backoff: {exc}")
    superlink = next((a.split("=", 1)[1] for a in ctx.args if a.startswith("--superlink=")), None)
    if superlink is None and "--superlink" in ctx.args and ctx.args.index("--superlink") + 1 < len(ctx.args):
        superlink = ctx.args[ctx.args.index("--superlink") + 1]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    status = supervise(
        supernode,
        gate_argv(node_config=node_config, port=port, parent_pid=os.getpid(), warm=warm),
        retry=retry,
        superlink=superlink or "the SuperLink",
    )
    raise typer.Exit(status)


# ---------------------------------------------------------------------- adopt
@node_app.command("adopt")
def adopt(
    node_config: str = typer.Option(..., "--node-config", help="The node's config (TOML file or key=value pairs)."),
    model: Path = typer.Option(..., "--model", help="The new shared model (final_model.safetensors or its folder)."),
) -> None:
    """Score a new shared model against the one this node uses, on its most recent released days; adopt it only
    if better (node setting adopt = "if-better", the default) or always (adopt = "always")."""
    from medalloc_core.forecast.region import with_region
    from medalloc_core.forecast.region_store import RegionStoreError, read_region, region_path
    from medalloc_core.model_io import ModelFileError
    from medalloc_core.privacy.release import ReleaseStore, ReleaseStoreError
    from medalloc_core.tasks.forecasting.adoption import AdoptionError, policy_of
    from medalloc_core.tasks.forecasting.adoption import adopt as adopt_model

    keys = _node_config(node_config)
    if not keys.get("ledger-path"):
        _fail("the node config has no 'ledger-path': the released days and the adoption state live beside it")
    ledger = Path(str(keys["ledger-path"]))
    release = Path(str(keys.get("release-path") or ledger.with_name(ledger.name + ".released.csv")))
    try:
        policy = policy_of(keys)
        released = ReleaseStore.open(release).records()
        if region_path(release).exists():  # a region model is scored on the region the node's rounds read
            released = with_region(released, read_region(region_path(release)).region)
        decision = adopt_model(model, released=released, ledger_path=ledger, policy=policy)
    except (AdoptionError, ModelFileError, ReleaseStoreError, RegionStoreError, OSError) as exc:
        _fail(str(exc))
        return
    table = Table(title="Adopt or keep (WAPE on this node's most recent released days)", title_justify="left")
    for column in ("model", "version", "WAPE", "windows"):
        table.add_column(column, justify="right" if column in ("WAPE", "windows") else "left", no_wrap=True)
    if decision.current is not None:
        table.add_row("in use", decision.current.version, f"{decision.current.wape:.4f}", str(decision.current.windows))
    table.add_row("new", decision.candidate.version, f"{decision.candidate.wape:.4f}", str(decision.candidate.windows))
    out = Console(highlight=False)
    out.print(table)
    verdict = "adopted" if decision.adopted else "kept the model in use"
    out.print(f"{verdict}: {decision.reason} (adopt = {decision.policy}); version in use {decision.version_in_use}")


# ---------------------------------------------------------------------- check
@node_app.command("check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def check(
    ctx: typer.Context,
    node_config: str = typer.Option(..., "--node-config", help="The node's config (TOML file or key=value pairs)."),
    superlink: str | None = typer.Option(None, "--superlink", help="The coordinator's SuperLink address HOST:PORT."),
    root_certificates: Path | None = typer.Option(None, "--root-certificates", help="The federation's ca.crt."),
    private_key: Path | None = typer.Option(
        None, "--auth-supernode-private-key", help="The node's private key (keys/H000)."
    ),
    history: int = typer.Option(28, "--history", help="The federation's run-config 'history' (days of input)."),
    horizon: int = typer.Option(14, "--horizon", help="The federation's run-config 'horizon' (days forecast)."),
    targets: str = typer.Option("admissions,census", "--targets", help="The federation's run-config 'targets'."),
    offline: bool = typer.Option(False, "--offline", help="Do not dial the SuperLink."),
) -> None:
    """Check everything the node will use before it joins; exit 2 when anything is wrong.

    Takes the same --superlink, --root-certificates, --auth-supernode-private-key and
    --node-config as flower-supernode (other flower-supernode options are accepted and
    ignored), so the node's own command line can be checked as it is.
    """
    from medalloc.node.check import check_node, window_spec

    keys = _node_config(node_config)
    try:
        spec = window_spec(history, horizon, targets)
    except ValueError as exc:
        _fail(f"--history/--horizon/--targets: {exc}")
    result = check_node(
        keys,
        superlink=superlink,
        root_certificates=root_certificates,
        private_key=private_key,
        spec=spec,
        connect=not offline,
    )
    console = Console(soft_wrap=True, highlight=False)
    table = Table(title=f"medalloc node check ({escape(node_config)})", show_lines=False)
    for name in ("", "check", "status", "found"):
        table.add_column(name, overflow="fold")
    section = None
    for finding in result.findings:
        style = _STYLE[finding.status]
        text = escape(finding.text) + (f"\n[bold]→ {escape(finding.fix)}[/bold]" if finding.fix else "")
        table.add_row(
            finding.section if finding.section != section else "",
            finding.item,
            f"[{style}]{finding.status.upper()}[/{style}]",
            text,
        )
        section = finding.section
    console.print(table)
    failed = [f for f in result.findings if f.status == "fail"]
    for finding in failed:
        console.print(f"[red]error:[/red] {escape(finding.section)} {escape(finding.item)}: {escape(finding.text)}")
        if finding.fix:
            console.print(f"  fix: {escape(finding.fix)}")
    if failed:
        console.print(f"[red]NOT READY[/red]: {len(failed)} problem(s); the node should not join yet")
        raise typer.Exit(EXIT_INVALID)
    console.print("[green]READY[/green]: the node can join")
    del ctx


def register(app: typer.Typer) -> None:
    """Add the ``node`` command group to the ``medalloc`` app."""
    app.add_typer(node_app, name="node")
