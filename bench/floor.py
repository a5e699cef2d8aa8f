"""The design's floor: a bare Tornado ``RequestHandler`` that only proxies the POST upstream.

It does what the two fixed parts of the node's design cost on their own, with
none of the node's features (no validation, routing, usage, metrics, log,
headers of its own): it reads the body, POSTs it to ``--upstream`` with an
``Authorization`` header, and answers the upstream's body as JSON.

``--client tornado`` sends through a stock ``CurlAsyncHTTPClient`` (Tornado's
server with its defaults); ``--client node`` through the node's own
:class:`utils.upstream.transport.Transport`, on a server with the node's read
chunk size. The benchmark measures both beside the node and the bare handler
(``bench/bare.py``), so the node's CPU per request splits into Tornado's part,
the upstream round trip's and the node's own.

Run from the repository root: ``python bench/floor.py --upstream URL
[--client tornado|node] [--port 0]``; it prints ``listening on HOST:PORT``
once ready and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server import READ_CHUNK  # noqa: E402
from tools.serving import stop_on_signals  # noqa: E402
from utils import eventloop  # noqa: E402
from utils.upstream.transport import Transfer, Transport, UpstreamCall, header_lines  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-not-a-real-key"}


class TornadoClientProxy(RequestHandler):
    """The POST through Tornado's ``CurlAsyncHTTPClient``."""

    async def post(self) -> None:
        app = self.application.settings
        answer = await app["http"].fetch(
            app["url"], method="POST", body=self.request.body, headers=HEADERS, raise_error=False
        )
        self.set_header("Content-Type", "application/json")
        self.finish(answer.body)


class NodeTransportProxy(RequestHandler):
    """The POST through the node's transport."""

    async def post(self) -> None:
        app = self.application.settings
        transfer = Transfer()
        future = asyncio.get_running_loop().create_future()
        app["transport"].start(UpstreamCall(app["url"], self.request.body, app["lines"], 10, 60, transfer), future.set_result)
        reply = await future
        transfer.finish()
        self.set_header("Content-Type", "application/json")
        self.finish(reply.body)


async def serve(host: str, port: int, upstream: str, client: str) -> None:
    stop = stop_on_signals()
    url = upstream.rstrip("/") + "/chat/completions"
    if client == "tornado":
        http = CurlAsyncHTTPClient(force_instance=True, max_clients=1000)
        app = Application([(r"/.*", TornadoClientProxy)], log_function=lambda handler: None, url=url, http=http)
        server = HTTPServer(app)
    else:
        transport = Transport(1000)
        app = Application(
            [(r"/.*", NodeTransportProxy)], log_function=lambda handler: None,
            url=url, transport=transport, lines=header_lines(HEADERS),
        )
        server = HTTPServer(app, chunk_size=READ_CHUNK)
    sockets = bind_sockets(port, host)
    server.add_sockets(sockets)
    print(f"listening on {host}:{sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()
    (http if client == "tornado" else transport).close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a bare Tornado handler proxying a POST upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="the provider's base URL, e.g. http://127.0.0.1:PORT/v1")
    parser.add_argument("--client", choices=("tornado", "node"), default="tornado")
    args = parser.parse_args()
    # the event loop the node runs on, chosen as the node chooses it (EVENT_LOOP, uvloop by default)
    eventloop.install(eventloop.choose(os.environ.get("EVENT_LOOP", eventloop.UVLOOP))[0])
    asyncio.run(serve(args.host, args.port, args.upstream, args.client))


if __name__ == "__main__":
    main()
