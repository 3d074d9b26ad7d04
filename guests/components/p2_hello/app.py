# xtask-world: wasi:http/proxy@0.2.12
"""A `wasi:http/proxy@0.2` guest: answers every request with a greeting that counts the
requests its instance served, so a client can see instances being reused."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

served = 0


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global served
        served += 1
        path = request.path_with_query() or "/"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(
            f"hello from a p2 component: {path} (request {served} of this instance)\n".encode()
        )
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
