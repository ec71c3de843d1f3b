"""Upstream app for the persona-guard differential router suite: Starlette
served by uvicorn with the h11 HTTP parser.

Handlers (any method):
  /webhooks/persona               -> "webhook"
  /webhooks/persona/{rest:path}   -> "webhook-sub"
  /{p:path}                       -> "other"
Control endpoint (checked before routing): GET /__pg_counts

Usage: python3 starlette_app.py   -> prints "LISTENING <port>" once ready.
"""

import socket

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, request_response

counts = {"webhook": 0, "webhook-sub": 0, "other": 0}


class AnyMethod:
    """ASGI wrapper around a request handler.

    Starlette's ``Route`` defaults a plain function endpoint to GET only; an
    ASGI-app endpoint with ``methods=None`` is routed for every method.
    """

    def __init__(self, func):
        self.func = func
        self.app = request_response(func)

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def handler(name):
    async def endpoint(request: Request):
        counts[name] += 1
        # Read the whole body before answering so keep-alive connections stay usable.
        await request.body()
        return JSONResponse(
            {"handler": name, "path": request.scope["path"]},
            headers={"X-Handler": name},
        )

    endpoint.__name__ = name.replace("-", "_")
    return AnyMethod(endpoint)


class CountsMiddleware:
    """ASGI middleware answering GET /__pg_counts before Starlette routes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/__pg_counts":
            await JSONResponse(counts)(scope, receive, send)
            return
        await self.app(scope, receive, send)


app = Starlette(
    routes=[
        Route("/webhooks/persona", handler("webhook")),
        Route("/webhooks/persona/{rest:path}", handler("webhook-sub")),
        Route("/{p:path}", handler("other")),
    ]
)
asgi_app = CountsMiddleware(app)


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started:
            port = sockets[0].getsockname()[1]
            print(f"LISTENING {port}", flush=True)


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        asgi_app,
        http="h11",
        lifespan="off",
        access_log=False,
        log_level="error",
        server_header=False,
        date_header=False,
    )
    Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
