"""A TLS gateway that exposes only the SuperLink's Fleet API to hospitals.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one HTTPS port, and in the
open-source build the Control API has no authentication: whoever reaches that port can
register their own node key, start and stop runs, list nodes and pull run logs. So the
SuperLink listens on loopback only and this gateway, on the address hospitals dial,
forwards ``POST /v1/fleet/*`` and nothing else. SuperNode authentication passes through
unchanged: each request carries the node's signature in HTTP headers, which the SuperLink
checks itself.

Run as ``python -m server.fleet_gateway --listen 0.0.0.0:9092 --superlink 127.0.0.1:9091
--ssl-certfile certs/server.pem --ssl-keyfile certs/server.key --ssl-ca-certfile certs/ca.crt``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

logger = logging.getLogger(__name__)

FLEET_PREFIX = "/v1/fleet/"
# Hop-by-hop headers (RFC 9110 7.6.1) and those httpx/uvicorn recompute.
_DROP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)
# Fleet calls are small protobuf messages, but pulling a model object can take a while
# on a slow hospital link; the SuperNode retries on 502/503/504 by itself.
_UPSTREAM_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway forwards to and how it checks the SuperLink's certificate.

    Attributes
    ----------
    superlink : str
        ``host:port`` of the SuperLink's own (loopback) listener.
    ca_certfile : Path
        CA that signed the SuperLink's certificate; the gateway verifies the upstream.
    """

    superlink: str
    ca_certfile: Path


def create_app(config: GatewayConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """A Starlette app that forwards Fleet API calls to ``config.superlink`` over TLS.

    ``transport`` replaces the network connection to the SuperLink (tests use
    ``httpx.MockTransport``); by default it is a TLS connection checked against the CA.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=f"https://{config.superlink}",
            verify=str(config.ca_certfile),
            timeout=_UPSTREAM_TIMEOUT,
            transport=transport,
        ) as client:
            app.state.client = client
            yield

    async def forward(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS}
        try:
            upstream = await client.post(request.url.path, content=await request.body(), headers=headers)
        except httpx.TransportError as exc:
            logger.warning("SuperLink unreachable at %s: %s", config.superlink, exc)
            return PlainTextResponse("SuperLink unreachable", status_code=502)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_HEADERS}
        return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)

    async def refuse(request: Request) -> Response:
        logger.info("refused %s %s from %s", request.method, request.url.path, request.client)
        return PlainTextResponse("Only the Fleet API is served here.", status_code=403)

    return Starlette(
        routes=[
            Route(FLEET_PREFIX + "{rest:path}", forward, methods=["POST"]),
            Route("/{rest:path}", refuse, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ],
        lifespan=lifespan,
    )


def _split_host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
    return host.strip("[]"), int(port)


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def main(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT hospitals connect to.")],
    superlink: Annotated[str, typer.Option("--superlink", help="HOST:PORT of the loopback SuperLink.")],
    ssl_certfile: Annotated[Path, typer.Option("--ssl-certfile", exists=True, dir_okay=False)],
    ssl_keyfile: Annotated[Path, typer.Option("--ssl-keyfile", exists=True, dir_okay=False)],
    ssl_ca_certfile: Annotated[Path, typer.Option("--ssl-ca-certfile", exists=True, dir_okay=False)],
) -> None:
    """Serve the SuperLink's Fleet API (and nothing else) to hospitals over TLS."""
    import uvicorn

    host, port = _split_host_port(listen, "--listen")
    _split_host_port(superlink, "--superlink")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # One line per forwarded heartbeat would drown the refusals worth reading.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(GatewayConfig(superlink=superlink, ca_certfile=ssl_ca_certfile))
    logger.info("forwarding %s* on %s:%s to https://%s", FLEET_PREFIX, host, port, superlink)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(ssl_certfile),
        ssl_keyfile=str(ssl_keyfile),
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    cli()
