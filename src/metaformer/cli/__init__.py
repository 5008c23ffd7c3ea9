"""The ``metaformer`` command: train, eval, predict, segment, detect, cam, list, info, convert, benchmark, export,
serve.

Errors of the user's making (a bad flag, file or dataset; ``MetaformerError`` and ``OSError``) end the command
with one ``error:`` line: exit status 2 for a command line that is wrong, 1 for anything else that failed. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from ..errors import CheckpointWarning, ConfigError, MetaformerError
from . import evaluate, explain, export, infer, models, serve, train
from .options import model_from_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaformer",
        description="MetaFormer / PoolFormer models: classification, "
        "segmentation and detection; export, Grad-CAM and a web service.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    evaluate.add_parser(sub)
    infer.add_parsers(sub)
    models.add_parsers(sub)
    explain.add_parser(sub)
    export.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("always", CheckpointWarning)
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        if hasattr(args, "checkpoint") and hasattr(args, "model"):
            model_from_checkpoint(args)  # only where --model is not given
        return args.run(args)
    except ConfigError as error:  # the command line asked for something that does not exist or fit
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`metaformer predict ... | head`): stop quietly, and keep Python's final flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (MetaformerError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
