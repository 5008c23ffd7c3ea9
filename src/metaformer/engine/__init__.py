"""The training engine shared by every task: loop, DDP, AMP, EMA, checkpoints, exact resume, logs and plots."""

from .distributed import DistributedContext, init_distributed
from .trainer import NonFiniteLossError, StepResult, Trainer, TrainerConfig

__all__ = ["DistributedContext", "NonFiniteLossError", "StepResult", "Trainer", "TrainerConfig", "init_distributed"]
