# xtask-world: wasi:http/service@0.3.0
"""A `wasi:http/service@0.3` guest: answers every request with a greeting that counts the
requests its instance served, so a client can see instances being reused."""

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Request, Response

served = 0


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        global served
        served += 1
        path = request.get_path_with_query() or "/"
        body = f"hello from a p3 component: {path} (request {served} of this instance)\n"
        return text_response(200, body)


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
