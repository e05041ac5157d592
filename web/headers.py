"""The security headers on every answer of the web (OWASP ASVS V14.4): pages carry no script
at all, so the policy allows none; styles are the page's own; no page may be framed."""

from __future__ import annotations

from gpuacct.bounded_body import App, Message, Receive, Scope, Send

POLICY = ("default-src 'none'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [(b"content-security-policy", POLICY.encode()),
           (b"x-frame-options", b"DENY"),
           (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin")]


class SecurityHeaders:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
