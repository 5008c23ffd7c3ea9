"""``metaformer serve``: a trained model behind an HTTP API and a web page (FastAPI and uvicorn)."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING

from ..errors import UsageError
from .options import (
    FROM_CHECKPOINT,
    add_device,
    add_fuse,
    add_weights,
    load_trained,
    non_negative_float,
    positive,
    positive_float,
    task_of,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

# The packages of the [serve] extra and the modules they install (python-multipart's was `multipart` before 0.0.13).
SERVE_PACKAGES = {
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "python-multipart": ("python_multipart", "multipart"),
}


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model: HTTP API (POST /predict) and a web page (needs the [serve] extra)")
    p.add_argument(
        "--model",
        help="a classifier, segmentation or detection model's name" + FROM_CHECKPOINT,
    )
    add_weights(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)"
    )
    p.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host header to answer besides localhost, 127.0.0.1, ::1 and --host (repeatable); on 0.0.0.0 or :: "
        "every host is answered unless this is given",
    )
    p.add_argument(
        "--max-batch", type=positive, default=16, help="classifiers: images per forward pass at most (default 16)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=10.0,
        help="classifiers: how long a batch waits for requests still arriving (default 10)",
    )
    add_device(p)
    p.add_argument(
        "--max-upload-mb", type=positive_float, default=20.0, help="larger uploads are refused with 413 (default 20)"
    )
    add_fuse(p)
    p.set_defaults(run=serve)


def missing_modules() -> list[str]:
    return [
        package
        for package, modules in SERVE_PACKAGES.items()
        if all(importlib.util.find_spec(module) is None for module in modules)
    ]


def build_app(args: argparse.Namespace) -> FastAPI:
    """The application ``serve`` runs, with the model ``args`` name loaded (fused unless --no-fuse) on --device."""
    missing = missing_modules()
    if missing:
        raise UsageError(
            f'metaformer serve needs {", ".join(missing)}, not installed here: pip install "metaformer[serve]"'
        )
    from ..fast import prepare
    from ..serve import create_app

    kind = task_of(args.model)
    plain = load_trained(args, kind, fused=False)
    model = prepare(plain, fuse=not args.no_fuse, device=args.device)
    # Grad-CAM needs gradients, which the fused model does not carry: classifiers keep the plain one for it.
    return create_app(
        model,
        name=args.model,
        explain_model=plain if kind == "classification" else None,
        parameters=sum(p.numel() for p in plain.parameters()),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        allowed_hosts=allowed_hosts(args.host, args.allow_host),
    )


def allowed_hosts(host: str, extra: list[str]) -> list[str] | None:
    """The Host headers the service answers: its own names, unless it listens on every interface (then any, or
    those ``--allow-host`` names)."""
    if host in ("0.0.0.0", "::") and not extra:
        return None
    return sorted({"localhost", "127.0.0.1", "[::1]", "::1", host, *extra} - {"0.0.0.0", "::"})


def check_address(host: str, port: int) -> None:
    """Refuse an address this machine cannot listen on before the model is loaded, in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} is not an address of this machine ({error.strerror})") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as error:
            raise UsageError(
                f"cannot listen on {host}:{port} ({error.strerror}): choose another --port, or stop what uses it"
            ) from None


def serve(args: argparse.Namespace) -> int:
    check_address(args.host, args.port)
    app = build_app(args)
    import uvicorn

    kind = task_of(args.model).replace("_", " ")
    where = f"http://{args.host}:{args.port}/" if args.port else f"a free port of {args.host} (named below)"
    print(f"serving {args.model} ({kind}) at {where}  (Ctrl-C to stop)", file=sys.stderr, flush=True)
    # On SIGTERM or Ctrl-C uvicorn stops listening and answers the requests in flight; the app's shutdown then lets
    # the model worker finish what is queued. uvicorn then raises the signal again for the handler it found: for
    # SIGTERM that is this one, as a stop that was asked for and done cleanly ends with status 0 (Ctrl-C: 130).
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if _in_main_thread() else None
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=60)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
