"""The training engine every task shares: the loop, DDP, AMP, EMA, checkpoints, exact resume, logs and plots."""

from .distributed import DistributedContext, init_distributed, shutdown_distributed
from .launch import run_training
from .plan import Plan
from .run_folder import RunFolder
from .task import RunSettings, TrainingTask, dataclass_from_dict, default_num_workers
from .trainer import Trainer

__all__ = [
    "DistributedContext",
    "Plan",
    "RunFolder",
    "RunSettings",
    "Trainer",
    "TrainingTask",
    "dataclass_from_dict",
    "default_num_workers",
    "init_distributed",
    "run_training",
    "shutdown_distributed",
]
