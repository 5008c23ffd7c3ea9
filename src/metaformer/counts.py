"""The zoo's parameter and MAC counts, measured once and kept in ``counts.json`` so that ``metaformer info`` and
``list`` answer without importing torch. ``python -m metaformer.counts`` measures them again (and rewrites
the file); a test checks the file against fresh counts."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

FILE = Path(__file__).with_name("counts.json")


@functools.cache
def _table() -> dict[str, dict]:
    return json.loads(FILE.read_text())


def stored_counts(name: str) -> dict | None:
    """``{"params", "frozen_params", "macs", "input"}`` of a zoo model at its default size, or None for a model the
    file does not hold (one registered by the user: count it with ``measure``)."""
    return _table().get(name)


def measure(name: str, image_size: int | None = None) -> dict:
    """Count the parameters (and, for a classifier, the MACs at ``image_size`` or its own) of a freshly built
    model."""
    from .api import create_model
    from .models.complexity import count_macs, count_params

    model = create_model(name, **({"image_size": image_size} if image_size else {})).eval()
    trainable, frozen = count_params(model)
    if model.task != "classification":  # the papers report parameters only for the dense models
        return {"params": trainable, "frozen_params": frozen, "macs": None, "input": model.input_settings()}
    size = model.config.image_size
    return {
        "params": trainable,
        "frozen_params": frozen,
        "macs": count_macs(model, size),
        "input": {"image_size": size},
    }


def main() -> None:
    from .models.zoo import list_models

    table = {name: measure(name) for name in list_models()}
    FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FILE} ({len(table)} models)", file=sys.stderr)


if __name__ == "__main__":
    main()
