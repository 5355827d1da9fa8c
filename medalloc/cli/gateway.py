"""`medalloc gateway start|stop|config`: the nginx Fleet gateway in front of the SuperLink."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # imported where used: the CLI starts fast
    from medalloc.server.gateway import GatewayConfig

_out = Console()
_err = Console(stderr=True)

gateway_app = typer.Typer(
    help="The Fleet gateway (nginx): the only thing hospitals reach; it forwards the Fleet API and refuses the rest.",
    no_args_is_help=True,
)


def _fail(message: str) -> NoReturn:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


_LISTEN = typer.Option(..., "--listen", help="HOST:PORT hospitals connect to (0.0.0.0:9092: every interface).")
_SUPERLINK = typer.Option(
    "127.0.0.1:9091", "--superlink", help="HOST:PORT of the SuperLink; must be a loopback address."
)
_CERTS = typer.Option(
    Path("certs"),
    "--certs",
    help="Folder holding server.pem, server.key and ca.crt (from `python -m medalloc.server.certs`).",
)
_DIR = typer.Option(
    Path("state/gateway"), "--dir", help="Folder the gateway owns: nginx.conf, nginx.pid, access.log, error.log."
)
_NGINX = typer.Option(None, "--nginx", help="The nginx binary (default: nginx on PATH, then /usr/sbin/nginx).")
_MIN_RATE = typer.Option(
    0,
    "--min-upload-rate",
    min=0,
    help="KiB/s a request's bytes must average after its first 10 s (njs; 0: off). Costs gateway memory: "
    "docs/deploy.md, 'Slow clients'.",
)


def _config(listen: str, superlink: str, certs: Path, directory: Path, min_rate: int = 0) -> GatewayConfig:
    from medalloc.server.gateway import GatewayConfig, GatewayLimits, parse_host_port

    listen_host, listen_port = parse_host_port(listen, "--listen")
    link_host, link_port = parse_host_port(superlink, "--superlink")
    return GatewayConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        superlink_host=link_host,
        superlink_port=link_port,
        certfile=certs / "server.pem",
        keyfile=certs / "server.key",
        ca_certfile=certs / "ca.crt",
        directory=directory.resolve(),
        limits=GatewayLimits(min_upload_kib_s=min_rate),
    )


@gateway_app.command("start")
def start(
    listen: str = _LISTEN,
    superlink: str = _SUPERLINK,
    certs: Path = _CERTS,
    directory: Path = _DIR,
    nginx: str | None = _NGINX,
    min_rate: int = _MIN_RATE,
) -> None:
    """Write DIR/nginx.conf, check it, and run nginx in the foreground (stop: Ctrl-C, SIGTERM or `gateway stop`)."""
    from medalloc.server import gateway

    try:
        config = _config(listen, superlink, certs, directory, min_rate)
        argv = gateway.start(config, nginx=gateway.find_nginx(nginx))
    except (gateway.GatewayError, OSError) as exc:
        _fail(str(exc))
    _out.print(
        f"gateway on https://{listen} -> https://{superlink} (Fleet API only); "
        f"log {config.directory / gateway.ACCESS_LOG}",
        highlight=False,
    )
    _out.file.flush()
    os.execv(argv[0], argv)


@gateway_app.command("stop")
def stop(directory: Path = _DIR) -> None:
    """Stop the gateway running from DIR (finishes requests in flight first)."""
    from medalloc.server import gateway

    pid = gateway.stop(directory.resolve())
    _out.print(f"stopped the gateway (pid {pid})" if pid else f"no gateway runs from {directory}", highlight=False)


@gateway_app.command("config")
def config(
    listen: str = _LISTEN,
    superlink: str = _SUPERLINK,
    certs: Path = _CERTS,
    directory: Path = _DIR,
    nginx: str | None = _NGINX,
    min_rate: int = _MIN_RATE,
) -> None:
    """Write and check DIR/nginx.conf without starting anything (to read it, or to run it under your own nginx)."""
    from medalloc.server import gateway

    try:
        cfg = _config(listen, superlink, certs, directory, min_rate)
        binary = gateway.find_nginx(nginx)
        path = gateway.write_config(cfg, modules=gateway.nginx_modules(binary, cfg.limits))
        gateway.check_config(binary, cfg.directory)
    except (gateway.GatewayError, OSError) as exc:
        _fail(str(exc))
    _out.print(f"wrote {path}; nginx accepts it", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `gateway` to the medalloc app."""
    app.add_typer(gateway_app, name="gateway")
