"""The management API of functions: list, deploy (create / update), get, delete, logs, code.

Every route here calls the controller, the only writer; the gateway adds validation that
fails early with the same messages, and turns revisions into ETag / If-Match.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from gateway import schemas
from lamina.controller_client import ControllerClient
from lamina.core.errors import Conflict, InvalidSpec, LaminaError, NotFound
from lamina.core.functions import Function, FunctionSpec, validate_name

log = logging.getLogger(__name__)
router = APIRouter(tags=["functions"])

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: Read size when streaming an uploaded zip to the controller.
CHUNK_BYTES = 1 << 20
#: An unconditional PUT without code retries this many times if the function changes under it.
_PUT_ATTEMPTS = 3


def _controller(request: Request) -> ControllerClient:
    return request.app.state.controller


def _expected_revision(request: Request) -> int | None:
    """The revision of an ``If-Match`` header (``"12"``, quotes optional), or None."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or int(tag) == 0:
        raise InvalidSpec(f"If-Match {value!r} is not a revision: expected e.g. '\"12\"'")
    return int(tag)


def _function_response(fn: Function, status: int = 200) -> JSONResponse:
    return JSONResponse(schemas.function_json(fn), status, headers={"ETag": f'"{fn.revision}"'})


async def _written(request: Request, fn: Function, status: int = 200) -> JSONResponse:
    """The response to a successful write, once this gateway's cache holds the new revision:
    a client that deploys then invokes through the same gateway never gets a 404 or the old
    code, however far the watch stream lags."""
    try:
        await request.app.state.cache.resolve(fn.name, fn.revision)
    except LaminaError as exc:  # the write succeeded; the watch stream will catch up
        log.info("could not refresh function %s in the cache: %s", fn.name, exc)
    return _function_response(fn, status)


class DeployForm:
    """The multipart body of POST and PUT: a ``spec`` JSON field and an optional ``code`` zip."""

    def __init__(self, spec_text: str, code: UploadFile | None) -> None:
        self.spec_text = spec_text
        self.code = code

    @classmethod
    async def read(cls, request: Request, form) -> DeployForm:  # type: ignore[no-untyped-def]
        spec = form.get("spec")
        if spec is None:
            raise InvalidSpec("missing form field 'spec' (the function's configuration as a JSON object)")
        if isinstance(spec, UploadFile):
            spec = (await spec.read()).decode("utf-8", errors="replace")
        code = form.get("code")
        if code is not None and not isinstance(code, UploadFile):
            raise InvalidSpec("form field 'code' must be a file (the zip bundle)")
        return cls(spec, code)

    async def upload(self, controller: ControllerClient) -> str:
        """Stream the zip to the controller in chunks; return its sha256."""
        assert self.code is not None
        code = self.code

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await code.read(CHUNK_BYTES):
                yield chunk

        sha256, _size = await controller.upload_code(chunks())
        return sha256


def _multipart(request: Request):  # type: ignore[no-untyped-def]
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidSpec(
            f"expected a multipart/form-data body with fields 'spec' and 'code', not {content_type or 'no body'!r}"
        )
    return request.form(max_files=1, max_fields=1)


@router.get(
    "/functions", summary="List functions", response_model=schemas.FunctionList, responses=schemas.ERRORS,
    description="Functions in name order, a page at a time. Environment values are never listed, only their keys.",
)
async def list_functions(
    request: Request, page_size: int = Query(0, ge=0, le=1000), page_token: str = ""
) -> JSONResponse:
    functions, token = await _controller(request).list_functions(page_size, page_token)
    return JSONResponse(
        {"functions": [schemas.function_json(f, with_environment=False) for f in functions], "next_page_token": token}
    )


@router.post(
    "/functions", summary="Create a function", status_code=201, response_model=schemas.FunctionOut,
    responses=schemas.ERRORS, openapi_extra=schemas.DEPLOY_FORM,
)
async def create_function(request: Request) -> JSONResponse:
    controller = _controller(request)
    async with _multipart(request) as form:
        deploy = await DeployForm.read(request, form)
        spec = schemas.parse_spec(deploy.spec_text)  # fail before uploading anything
        if deploy.code is None:
            raise InvalidSpec("missing form field 'code' (the zip bundle)")
        sha256 = await deploy.upload(controller)
    return await _written(request, await controller.create_function(spec.with_code(sha256)), 201)


@router.put(
    "/functions/{name}", summary="Create or update a function", response_model=schemas.FunctionOut,
    responses={201: {"model": schemas.FunctionOut}, **schemas.ERRORS}, openapi_extra=schemas.DEPLOY_FORM,
    description="Without `code`, the current code is kept. With `If-Match: \"<revision>\"`, the update happens "
    "only if the function is still at that revision (409 otherwise). 201 when created, 200 when updated.",
)
async def put_function(name: str, request: Request) -> JSONResponse:
    validate_name(name)
    controller = _controller(request)
    expected = _expected_revision(request)
    async with _multipart(request) as form:
        deploy = await DeployForm.read(request, form)
        spec = schemas.parse_spec(deploy.spec_text, name=name)
        sha256 = await deploy.upload(controller) if deploy.code is not None else ""
    if expected is not None:
        if not sha256:
            sha256 = (await controller.get_function(name)).spec.code_sha256
        return await _written(request, await controller.update_function(spec.with_code(sha256), expected))
    fn, status = await _upsert(controller, spec, sha256)
    return await _written(request, fn, status)


async def _upsert(controller: ControllerClient, spec: FunctionSpec, sha256: str) -> tuple[Function, int]:
    """Update the function if it exists, else create it: (function, 200 or 201)."""
    for _ in range(_PUT_ATTEMPTS):
        if sha256:
            try:
                return await controller.update_function(spec.with_code(sha256)), 200
            except NotFound:
                pass
        else:
            try:
                current = await controller.get_function(spec.name)
            except NotFound:
                raise InvalidSpec(f"code is required to create function {spec.name!r}") from None
            try:
                # Conditional on what was read, so that keeping "the current code" never
                # reverts the code of a concurrent deploy.
                return await controller.update_function(spec.with_code(current.spec.code_sha256), current.revision), 200
            except (Conflict, NotFound):
                continue
        try:
            return await controller.create_function(spec.with_code(sha256)), 201
        except Conflict:
            continue  # created concurrently: update it instead
    raise Conflict(f"function {spec.name!r} kept changing during the update; try again")


@router.get(
    "/functions/{name}", summary="Get a function", response_model=schemas.FunctionOut, responses=schemas.ERRORS
)
async def get_function(name: str, request: Request) -> JSONResponse:
    validate_name(name)
    return _function_response(await _controller(request).get_function(name))


@router.delete(
    "/functions/{name}", summary="Delete a function", status_code=204, responses=schemas.ERRORS,
    response_class=Response,
)
async def delete_function(name: str, request: Request) -> Response:
    validate_name(name)
    await _controller(request).delete_function(name, _expected_revision(request) or 0)
    return Response(status_code=204)


@router.get(
    "/functions/{name}/logs", summary="Query a function's logs", response_model=schemas.LogRecords,
    responses=schemas.ERRORS,
    description="The newest `limit` records (oldest first), optionally of one request; pass the last `id` seen as "
    "`after_id` to tail.",
)
async def function_logs(
    name: str, request: Request, request_id: str = "", after_id: int = Query(0, ge=0),
    limit: int = Query(0, ge=0, le=10_000),
) -> JSONResponse:
    validate_name(name)
    await _controller(request).get_function(name)  # NotFound → 404, even if logs of that name remain
    records = await _controller(request).query_logs(name, request_id, after_id, limit)
    return JSONResponse({"records": [schemas.log_json(r) for r in records]})


@router.get(
    "/code/{sha256}", summary="Download a code bundle", response_class=StreamingResponse, responses=schemas.ERRORS
)
async def download_code(sha256: str, request: Request) -> StreamingResponse:
    if not _SHA256_RE.fullmatch(sha256):
        raise InvalidSpec(f"invalid code digest {sha256!r}: expected 64 lower-case hex digits")
    stream = _controller(request).download_code(sha256)
    # Pull the first chunk before answering, so an unknown digest is a 404, not a broken 200.
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in stream:
            yield chunk

    return StreamingResponse(
        body(), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{sha256[:12]}.zip"'},
    )
