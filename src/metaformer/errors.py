"""The errors raised for bad inputs and settings. Each message says which file or setting is wrong and what to do.

The command line prints these, and ``OSError``, as one ``error:`` line; any other exception is a bug and keeps its
traceback. Each class also derives from the built-in type a Python caller would expect (``ValueError`` for a bad
value, ``OSError`` for a file that cannot be written), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os


class MetaformerError(Exception):
    """Base of the errors that describe a bad input, setting or file rather than a bug."""


class ConfigError(MetaformerError, ValueError):
    """A model name, option or combination of settings that does not exist or does not fit."""


class UsageError(ConfigError):
    """A command-line flag that the chosen command or model does not take."""


class CheckpointError(MetaformerError, RuntimeError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class CheckpointWarning(UserWarning):
    """Something was initialised fresh or ignored while loading; loading still succeeded."""


class DatasetError(MetaformerError, ValueError):
    """A dataset folder or annotation file that cannot be used as given."""


class ImageLoadError(DatasetError):
    """A file that is not a readable image; ``reason`` says why without repeating the path."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple:  # DataLoader workers send errors back pickled
        return type(self), (self.path, self.reason)


class RunFolderError(MetaformerError):
    """A training run folder that cannot be started, resumed or written as asked."""


class NonFiniteLossError(MetaformerError, RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class FileWriteError(MetaformerError, OSError):
    """A file could not be written (disk full, no permission, ...); the previous version is kept."""
