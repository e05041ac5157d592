"""What the control plane's signed routes share: the body of a request a node signed, checked
and read into its model, or the HTTP error that says what is wrong with it; and the answer,
signed with the same node's key."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from gpuacct.config import describe_error
from gpuacct.signing import MasterKeys, SignatureError

M = TypeVar("M", bound=BaseModel)


def problems(exc: RequestValidationError | ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = [p for p in error["loc"] if p != "body"]
        lines.append(describe_error({**error, "loc": loc}) if error["type"] != "json_invalid"
                     else f"body is not valid JSON: {error.get('ctx', {}).get('error', '')}")
    return "; ".join(lines)


async def signed_body(request: Request, keys: MasterKeys, path: str, model: type[M],
                      what: str, node_of: Callable[[M], str]) -> M:
    """401 if a node did not sign it with its own key, or speaks for another node
    (`node_of`); 400 naming the problem if it is not a `model`."""
    body = await request.body()
    try:
        signer = keys.verify("POST", path, dict(request.headers), body)
    except SignatureError as exc:
        raise HTTPException(401, f"refused: {exc}") from None
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(400, f"bad {what}: {problems(exc)}") from None
    if node_of(parsed) != signer:
        raise HTTPException(401, f"refused: signed by node {signer!r} for node "
                                 f"{node_of(parsed)!r}")
    return parsed


def signed_answer(keys: MasterKeys, node: str, path: str, data: bytes) -> Response:
    return Response(data, media_type="application/json",
                    headers=keys.sign(node, "RESPONSE", path, data))
