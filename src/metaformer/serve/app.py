"""The FastAPI application: ``GET /`` (the web page), ``POST /predict``, ``GET /health`` and ``GET /info``.

Every bad request is answered ``{"error": "..."}`` with a 4xx status; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from importlib import resources

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..errors import ImageLoadError
from ..task_table import task as task_entry
from ..tasks.drawing import to_base64
from .batching import Batcher, Stopped
from .inference import MAX_DENSE_SIDE, decode
from .limits import BodyLimit, UploadTooLarge

FIELD = "image"  # the multipart form field that carries the image
RAW_TYPES = ("image/", "application/octet-stream")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def create_app(
    model: torch.nn.Module,
    *,
    name: str | None = None,
    explain_model: torch.nn.Module | None = None,
    parameters: int | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_upload_mb: float = 20.0,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The service for a classifier, segmentation or detection model, ready in eval mode on its device (fused or
    not). ``explain_model``: the unfused classifier, for Grad-CAM (``?cam=1``); ``parameters``: the count /info
    shows (default: ``model``'s, which fusing lowers). Classifier requests that arrive within ``max_wait_ms`` of
    each other run as one batch of up to ``max_batch``; dense models run one photo at a time. ``allowed_hosts``:
    the ``Host`` header values answered (None: any); a page a browser loaded from elsewhere cannot reach a service
    on 127.0.0.1 through a name that resolves there (DNS rebinding)."""
    task = model.task
    entry = task_entry(task)
    predictor = entry.load("predictor")  # the one `predict`, `segment` and `detect` run
    runner = predictor(model, explain_model=explain_model) if "cam" in predictor.queries else predictor(model)
    if runner.batching:
        batcher = Batcher(runner.classify, max_batch, max_wait_ms / 1000)
    else:
        batcher = Batcher(lambda jobs: [job() for job in jobs], 1, 0.0)  # photos of different sizes: one at a time
    cam_lock = asyncio.Lock()  # Grad-CAM runs beside the batches; one at a time keeps the CPU for them

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()  # after uvicorn has answered the requests in flight: whatever is queued runs first

    app = FastAPI(title=f"metaformer serve: {name or task}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20))
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    _add_error_handlers(app)
    info = {
        "model": name or model.name,
        "task": task,
        "classes": runner.labels,
        "parameters": parameters if parameters is not None else sum(p.numel() for p in model.parameters()),
        "device": str(next(model.parameters()).device),
        "image_size": runner.input_size if runner.batching else model.input_settings(),
        "pretrained_cfg": model.pretrained_cfg.to_dict(),
        "fused": bool(getattr(model, "is_fused", False)),
        "batching": runner.batching,
        "max_batch": max_batch if runner.batching else 1,
        "max_wait_ms": max_wait_ms if runner.batching else 0,
        "max_upload_mb": max_upload_mb,
        "grad_cam": getattr(runner, "explain_model", None) is not None,
    }
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    # GET and HEAD alike: monitoring probes ask with HEAD
    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict:
        return {"status": "ok"}

    @app.api_route("/info", methods=["GET", "HEAD"])
    async def get_info() -> dict:
        return {
            **info,
            "batches_run": batcher.batches_run,
            "images_run": batcher.items_run,
            "largest_batch": batcher.largest_batch,
            "arriving": batcher.arriving_now,
            "waiting": batcher.waiting,
        }

    @app.post("/predict")
    async def predict(
        request: Request,
        topk: int | None = Query(None, ge=1, description="classes to answer (classifiers; default 5)"),
        cam: bool = Query(False, description="add the Grad-CAM picture of the top class (classifiers)"),
        png: bool = Query(False, description="add the overlay or detections picture (dense models)"),
        score_threshold: float | None = Query(None, ge=0, le=1, description="detections at least this (default 0.5)"),
    ) -> dict:
        _refuse_foreign(entry.title, runner.queries, topk=topk, cam=cam, png=png, score_threshold=score_threshold)
        if cam and not info["grad_cam"]:
            raise BadRequest("this server has no unfused model for Grad-CAM (it was given a fused model only)")
        if runner.batching:
            with batcher.arriving():  # a batch being gathered waits for this request
                data, path = await _read_upload(request)
                image = await asyncio.to_thread(_decode, data, path)
                pixels = await asyncio.to_thread(_prepare, runner, image, path)
            top = await _submit(batcher, (pixels, topk or 5))
            result = {"path": path, "topk": top}
            if cam:
                async with cam_lock:
                    result["cam_png"] = to_base64(
                        await asyncio.to_thread(runner.cam_png, image, pixels, top[0]["index"])
                    )
            return result
        data, path = await _read_upload(request)
        image = await asyncio.to_thread(_decode, data, path)
        asked = {"png": png, "score_threshold": score_threshold}
        options = {key: value for key, value in asked.items() if key in runner.queries}
        found = await _submit(batcher, lambda: runner.respond(image, MAX_DENSE_SIDE, **options))
        return {"path": path, **found}

    return app


def _refuse_foreign(title: str, queries: tuple[str, ...], **given: object) -> None:
    """A query setting the model's predictor does not take is refused, not silently ignored."""
    foreign = [key for key, value in given.items() if value not in (None, False) and key not in queries]
    if foreign:
        raise BadRequest(f"{', '.join(foreign)} is not used for a {title} model (it takes {', '.join(queries)})")


async def _submit(batcher: Batcher, item: object) -> object:
    try:
        return await batcher.submit(item)
    except Stopped as error:
        raise BadRequest(str(error), 503) from error


def _decode(data: bytes, path: str) -> Image.Image:
    try:
        return decode(data, path)
    except ImageLoadError as error:
        raise BadRequest(f"{path}: {error.reason}") from error


def _prepare(runner: object, image: Image.Image, path: str) -> torch.Tensor:
    try:
        return runner.prepare(image, path)
    except ImageLoadError as error:
        raise BadRequest(f"{path}: {error.reason}") from error


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The image bytes and the name to answer with: a raw ``image/*`` body, or the form field ``image``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except HTTPException as error:  # Starlette's parser: a missing boundary, too many parts, ...
            message = f"a malformed multipart form ({error.detail}): send the file in field {FIELD!r}"
            raise BadRequest(message) from error
        try:
            upload = form.get(FIELD)
            if upload is None:
                raise BadRequest(f"the form has no field {FIELD!r}: send the image file in a field named {FIELD!r}")
            if not isinstance(upload, UploadFile):
                raise BadRequest(f"the form field {FIELD!r} is text, not a file: send the image file in it")
            return await upload.read(), upload.filename or "upload"
        finally:
            await form.close()  # the spooled temporary file
    if not content_type.startswith(RAW_TYPES):
        what = f"Content-Type {content_type!r} is not an image" if content_type else "no Content-Type"
        raise BadRequest(
            f"{what}: send the image bytes with Content-Type image/jpeg (image/png, ...), or a "
            f"multipart/form-data form with the file in field {FIELD!r}",
            415,
        )
    return await request.body(), "upload"


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(UploadTooLarge)
    async def too_large(request: Request, exc: UploadTooLarge) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # a 405's Allow: the methods the path takes
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return error(400, f"bad query: {problems}")
