"""Request bodies bounded before they are read, for the ASGI listeners (the enforcer, the web).

A body whose Content-Length is over the limit is refused with 413 before a byte of it is read;
one sent in chunks is counted as it arrives and refused the moment it passes the limit. Either
way nothing larger than the limit is ever held, whoever sends it and before anyone is
authenticated (authentication needs the body for a signed request)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(HTTPException):
    """An HTTPException, so that FastAPI passes it on from a body it was parsing (anything
    else it calls a 400) to the app's handler of HTTP errors, which answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large(max_bytes))


def _too_large(max_bytes: int) -> str:
    return f"the request body is over {max_bytes} bytes"


class BoundedBodies:
    """ASGI middleware: 413 for a body over `max_bytes` (JSON `{"detail": ...}`). The
    connection is not closed on the client: uvicorn drops the rest of the body as it comes
    (a close with unread data would reset the connection before the client read the 413)."""

    def __init__(self, app: App, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await self._refuse(send, 413, _too_large(self.max_bytes))
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:  # an answer is on its way: all that is left is to drop the connection
                raise
            await self._refuse(send, 413, _too_large(self.max_bytes))

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
