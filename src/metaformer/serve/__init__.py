"""``metaformer serve``: a model behind an HTTP API and a web page (FastAPI and uvicorn, the ``[serve]`` extra).

``create_app(model, ...)`` builds the FastAPI application; ``metaformer serve`` loads the model and runs it with
uvicorn. FastAPI is imported only when ``create_app`` is first used, so the rest of the package works without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
