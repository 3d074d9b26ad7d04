# xtask-world: wasi:http/proxy@0.2.12
"""A `wasi:http/proxy@0.2` guest that calls an upstream with `outgoing-handler.handle`, to show
those calls attributed too. The upstream is the `x-upstream` header's `host:port`; the path's
`n=N` query says how many calls to make, one after the other, before the answer, whose body
lists their statuses."""

from urllib import parse

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        target = parse.urlparse(request.path_with_query() or "/")
        n = int(parse.parse_qs(target.query).get("n", ["1"])[0])
        upstream = dict(request.headers().entries()).get("x-upstream", b"").decode()
        statuses = [call(upstream, f"/p2/{i}") for i in range(n)]
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(f"{target.path} {' '.join(statuses)}\n".encode())
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)


def call(upstream: str, path: str) -> str:
    request = OutgoingRequest(Fields())
    request.set_scheme(Scheme_Http())
    request.set_authority(upstream)
    request.set_path_with_query(path)
    future = outgoing_handler.handle(request, None)
    while (result := future.get()) is None:
        future.subscribe().block()
    if isinstance(result, Err) or isinstance(result.value, Err):
        return "error"
    response = result.value.value
    status = response.status()
    body = response.consume()
    stream = body.stream()
    while True:
        try:
            stream.blocking_read(16 * 1024)
        except Err as error:
            if isinstance(error.value, StreamError_Closed):
                break
            raise
    return str(status)
