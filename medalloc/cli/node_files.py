"""The node's own files as the node-side commands read them: node.toml, and the forecast log beside its ledger."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from medalloc_core.paths import read_regular_text

MAX_NODE_CONFIG_BYTES = 1 << 20  # a node.toml is a few hundred bytes

if TYPE_CHECKING:
    from medalloc.client.config import NodeConfig


def read_node_config(path: Path) -> NodeConfig:
    """The node's config from its node.toml; ``ValueError`` naming the file and what is wrong."""
    try:
        raw = tomllib.loads(read_regular_text(path, limit=MAX_NODE_CONFIG_BYTES, what="a node config (node.toml)"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--node-config {path}: cannot be read ({exc})") from None
    from medalloc.client.config import NodeConfig, NodeConfigError

    try:
        return NodeConfig.from_node_config(raw)
    except (NodeConfigError, ValueError) as exc:
        raise ValueError(f"--node-config {path}: {exc}") from None


def release_path_of(config: NodeConfig) -> Path:
    """The node's released-counts file: its ``release-path``, by default ``<ledger-path>.released.csv``."""
    from medalloc_core.tasks.forecasting.task import ForecastingTask, default_release_path

    settings = config.tasks.get(ForecastingTask.name)
    release = settings.extra.get("release-path") if settings is not None else None
    return Path(str(release)) if release else default_release_path(config.ledger_path)
