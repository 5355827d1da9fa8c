"""What a node's log tells its operator: the node-config or run-config key to set, never a Python name.

Core errors speak the library's language (``WindowSpec``, ``epsilon_budget``); an operator
can only change the SuperNode's ``--node-config`` keys or ask the coordinator to change a
run-config key. The texts live with the forecasting task (``medalloc_core.tasks.forecasting.hints``),
which logs them when it declines a round; these read them off a ``NodeConfig`` for
``medalloc node check``.
"""

from __future__ import annotations

from medalloc_core.tasks.forecasting.hints import data_hint as _data_hint
from medalloc_core.tasks.forecasting.hints import window_hint

from .config import NodeConfig

__all__ = ["data_hint", "window_hint"]


def data_hint(node: NodeConfig) -> str:
    """How the operator checks and fixes the node's data: the command and the keys involved."""
    return _data_hint(node.data_source_display, node.data_format, node.data_mapping)
