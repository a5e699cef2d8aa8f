"""The benchmark's reference: a bare Tornado ``RequestHandler`` answering a POST with a fixed JSON body.

No validation, no upstream, no logging: what one Tornado request costs on
this machine, the floor under the node's own figure (the node's CPU per
proxied request is reported as a ratio to it).

Run: ``python bench/bare.py [--port 0]``; it prints ``listening on HOST:PORT``
once ready and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.serving import stop_on_signals  # noqa: E402
from utils import eventloop  # noqa: E402

ANSWER = (
    b'{"id":"chatcmpl-bare","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":90,"completion_tokens":2,"total_tokens":92}}'
)


class BareHandler(RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(ANSWER)


async def serve(host: str, port: int) -> None:
    stop = stop_on_signals()
    sockets = bind_sockets(port, host)
    server = HTTPServer(Application([(r"/.*", BareHandler)], log_function=lambda handler: None))
    server.add_sockets(sockets)
    print(f"listening on {host}:{sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="a bare Tornado handler answering a fixed POST")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    # the event loop the node runs on, chosen as the node chooses it (EVENT_LOOP, uvloop by default)
    eventloop.install(eventloop.choose(os.environ.get("EVENT_LOOP", eventloop.UVLOOP))[0])
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
