"""The tests' tiny architecture: PoolFormer-S12's blocks, one per stage, at a fifth of its widths. Registered as a
user registers a model, for the tests that train, resume, kill and refuse, where what is checked is the run and not
the size of the model. Conftest imports it; a test's child process imports it (``import tiny``), and torchrun runs
this file as the command line (``python tests/tiny.py train ...``)."""

from __future__ import annotations

import sys

import metaformer
from metaformer.models.zoo import get_spec

TINY = "test_tiny_poolformer"

if TINY not in metaformer.list_models():
    config = get_spec("poolformer_s12").config.replace(depths=(1, 1, 1, 1), widths=(16, 24, 32, 48))
    metaformer.register_model(TINY, config, "PoolFormer-S12's blocks, one per stage, narrow (tests)")

if __name__ == "__main__":
    from metaformer.cli import main

    sys.exit(main())
