"""The upload size limit, enforced on the ASGI stream itself: a declared Content-Length over the limit is refused
before a byte is read, and a body without one (chunked) is counted as it arrives, whoever reads it (the raw body
or the multipart parser)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class UploadTooLarge(Exception):
    """The request body passed the limit while it was read (answered 413 by the app's handler)."""


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.3g} MB"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"error": self._message(f"Content-Length {int(declared):,} bytes")}, 413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self._message(f"{received:,} bytes received so far"))
            return message

        await self.app(scope, counted, send)

    def _message(self, what: str) -> str:
        return (
            f"the upload is too large ({what}); this server takes at most {_megabytes(self.max_bytes)} "
            "(its --max-upload-mb): send a smaller image"
        )
