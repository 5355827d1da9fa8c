"""Keeping Flower's and Ray's own log lines out of a researcher's terminal while a progress display runs."""

from __future__ import annotations

import logging


def quiet_flower(level: int = logging.ERROR) -> None:
    """Raise Flower's logger and every handler Flower attached to it to ``level``.

    Flower installs its own console handler on import, so setting the logger's level alone
    is not enough; per-round INFO lines would otherwise bury progress bars and tables.
    """
    import flwr.common.logger  # noqa: F401  (installs Flower's handler, which is then quietened)

    flower = logging.getLogger("flwr")
    flower.setLevel(level)
    for handler in flower.handlers:
        handler.setLevel(level)
