# xtask-world: wasi:http/service@0.3.0
"""A `wasi:http/service@0.3` guest that calls an upstream, to show every outgoing request
attributed to the incoming request it works for.

The upstream is the `x-upstream` header's `host:port`. Paths:
- `/sequential?n=N`: N calls one after the other, then the answer;
- `/concurrent?n=N`: N calls at once (`asyncio.gather`), then the answer;
- `/after?n=N`: the answer first, then N calls (work after the response);
- `/trap`: the handler fails (a trap of the instance);
- `/spin`: the handler never stops computing (until its CPU budget traps it);
- anything else: no calls.
The answer's body lists the status of every call made before it.
"""

import asyncio
from urllib import parse

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import client
from wit_world.imports.wasi_http_types import Fields, Request, Response, Scheme_Http


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        target = parse.urlparse(request.get_path_with_query() or "/")
        n = int(parse.parse_qs(target.query).get("n", ["1"])[0])
        upstream = dict(request.get_headers().copy_all()).get("x-upstream", b"").decode()
        if target.path == "/trap":
            raise RuntimeError("this handler fails on purpose")
        if target.path == "/spin":
            spins = 0
            while spins >= 0:
                spins += 1
        if target.path == "/sequential":
            statuses = [await call(upstream, f"/seq/{i}") for i in range(n)]
        elif target.path == "/concurrent":
            statuses = await asyncio.gather(*(call(upstream, f"/conc/{i}") for i in range(n)))
        elif target.path == "/after":

            async def after() -> None:
                for i in range(n):
                    await call(upstream, f"/after/{i}")

            componentize_py_async_support.spawn(after())
            statuses = []
        else:
            statuses = []
        return text_response(200, f"{target.path} {' '.join(map(str, statuses))}\n")


async def call(upstream: str, path: str) -> int:
    request = Request.new(Fields(), None, no_trailers(), None)[0]
    request.set_scheme(Scheme_Http())
    request.set_authority(upstream)
    request.set_path_with_query(path)
    response = await client.send(request)
    status = response.get_status_code()
    body, _trailers = Response.consume_body(response, unit_future())
    with body:
        while not body.writer_dropped:
            await body.read(16 * 1024)
    return status


def text_response(status: int, text: str) -> Response:
    tx, rx = wit_world.byte_stream()
    response = Response.new(
        Fields.from_list([("content-type", b"text/plain")]), rx, no_trailers()
    )[0]
    response.set_status_code(status)

    async def write() -> None:
        with tx:
            await tx.write_all(text.encode())

    componentize_py_async_support.spawn(write())
    return response


def no_trailers():
    return wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
        lambda: Ok(None)
    )[1]


def unit_future():
    return wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))[1]
