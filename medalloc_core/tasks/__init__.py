"""The federated tasks MedAlloc runs: a run-config ``task`` names one; a node serves those its config names.

Adding a task: a folder whose module exposes a :class:`~medalloc_core.tasks.base.FederatedTask`
instance, and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from medalloc_core.tasks.base import FederatedTask, NodeReply, NodeTask, TaskModel, TaskOptionsError, TaskRefused

#: Task name -> ``module:attribute`` of its FederatedTask (imported when first asked for).
TASKS: dict[str, str] = {
    "forecasting": "medalloc_core.tasks.forecasting.task:TASK",
    "equipment": "medalloc_core.tasks.equipment.task:TASK",
}
#: The run-config default (``task``): the ONE place that names it; nothing compares against it.
DEFAULT_TASK = "forecasting"

__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "FederatedTask",
    "NodeReply",
    "NodeTask",
    "TaskModel",
    "TaskOptionsError",
    "TaskRefused",
    "get_task",
    "task_names",
    "task_of_model",
]


class UnknownTask(ValueError):
    """A run or node names a task that is not registered."""


def task_names() -> tuple[str, ...]:
    """Every registered task."""
    return tuple(TASKS)


@cache
def get_task(name: str) -> FederatedTask:
    """The registered task ``name``; raises ``UnknownTask`` naming the known ones."""
    if name not in TASKS:
        raise UnknownTask(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    module, _, attribute = TASKS[name].partition(":")
    task = getattr(importlib.import_module(module), attribute)
    if not isinstance(task, FederatedTask) or task.name != name:
        raise TypeError(f"{TASKS[name]} is not the FederatedTask '{name}'")
    return task


def task_of_model(meta: Mapping[str, Any]) -> str:
    """The task a model file's sidecar belongs to: the one it names, or the task whose files name none."""
    named = meta.get("task")
    if named is not None:
        return str(named)
    legacy = [name for name in TASKS if get_task(name).legacy_model_without_task_key]
    if len(legacy) != 1:
        raise ValueError("the model file names no task, and no single registered task writes such files")
    return legacy[0]
