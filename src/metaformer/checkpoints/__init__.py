"""Checkpoints in every format users meet: safe reading, the formats' key maps, loading with a report of what does
not fit, saving, and the released weights."""

from ..errors import CheckpointError, CheckpointWarning
from .checkpoint import Checkpoint, LoadReport, open_checkpoint
from .formats import CLASSIFIER_FORMATS, DENSE_FORMATS, convert_state_dict, detect_format
from .loading import load_checkpoint
from .reading import read_state_dict
from .release import pretrained_file
from .saving import SAVE_FORMATS, check_destination, hf_config, save_checkpoint

__all__ = [
    "CLASSIFIER_FORMATS",
    "DENSE_FORMATS",
    "SAVE_FORMATS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWarning",
    "LoadReport",
    "check_destination",
    "convert_state_dict",
    "detect_format",
    "hf_config",
    "load_checkpoint",
    "open_checkpoint",
    "pretrained_file",
    "read_state_dict",
    "save_checkpoint",
]
