"""What the control plane's signed routes share: the body of a request a node signed, checked
and read into its model, or the HTTP error that says what is wrong with it."""

from __future__ import annotations

from typing import TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from gpuacct.config import describe_error
from gpuacct.signing import SignatureError, Verifier

M = TypeVar("M", bound=BaseModel)


def problems(exc: RequestValidationError | ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = [p for p in error["loc"] if p != "body"]
        lines.append(describe_error({**error, "loc": loc}) if error["type"] != "json_invalid"
                     else f"body is not valid JSON: {error.get('ctx', {}).get('error', '')}")
    return "; ".join(lines)


async def signed_body(request: Request, verifier: Verifier, path: str, model: type[M],
                      what: str) -> M:
    """401 if a node did not sign it, 400 naming the problem if it is not a `model`."""
    body = await request.body()
    try:
        verifier.verify("POST", path, dict(request.headers), body)
    except SignatureError as exc:
        raise HTTPException(401, f"refused: {exc}") from None
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(400, f"bad {what}: {problems(exc)}") from None
