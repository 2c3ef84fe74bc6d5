"""The engine: the config every run reads, the task seam and its registry, data parallelism, and the loop with
its checkpoints and reporting. It names no task: `jaxnets.tasks` holds the built-in ones."""

from jaxnets.train.config import engine_config, resolve_config
from jaxnets.train.loop import train_and_evaluate
from jaxnets.train.task import BetweenEpochs, State, Task, TaskSpec, get_task, list_tasks, register_task
from jaxnets.train.trainer import Trainer, build_trainer

__all__ = ["BetweenEpochs", "State", "Task", "TaskSpec", "Trainer", "build_trainer", "engine_config", "get_task",
           "list_tasks", "register_task", "resolve_config", "train_and_evaluate"]
