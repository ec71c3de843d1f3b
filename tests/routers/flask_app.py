"""Upstream app for the persona-guard differential router suite: Flask 3 on
werkzeug's own threaded server.

Handlers (any method):
  /webhooks/persona              -> "webhook"
  /webhooks/persona/<path:rest>  -> "webhook-sub"
  / and /<path:p>                -> "other"
Control endpoint (checked before routing): GET /__pg_counts

Usage: python3 flask_app.py   -> prints "LISTENING <port>" once ready.
"""

import json
import signal
import sys
import threading

from flask import Flask, request
from werkzeug.serving import WSGIRequestHandler, make_server

app = Flask(__name__)

_lock = threading.Lock()
counts = {"webhook": 0, "webhook-sub": 0, "other": 0}


def route_any(rule, **options):
    """Like ``app.route`` but for every HTTP method.

    Flask's ``methods=`` only takes a list (default GET); werkzeug's ``Rule``
    with ``methods=None`` matches any method, including non-standard ones.
    """

    def decorator(view):
        endpoint = options.pop("endpoint", view.__name__)
        app.url_map.add(app.url_rule_class(rule, endpoint=endpoint, methods=None, **options))
        app.view_functions[endpoint] = view
        return view

    return decorator


def reply(name):
    with _lock:
        counts[name] += 1
    # Read the whole body before answering so keep-alive connections stay usable.
    request.get_data()
    body = json.dumps({"handler": name, "path": request.path}, separators=(",", ":"))
    return body, 200, {"Content-Type": "application/json", "X-Handler": name}


@route_any("/webhooks/persona")
def webhook():
    return reply("webhook")


@route_any("/webhooks/persona/<path:rest>")
def webhook_sub(rest):
    return reply("webhook-sub")


@route_any("/", defaults={"p": ""}, endpoint="other")
@route_any("/<path:p>", endpoint="other")
def other(p):
    return reply("other")


class CountsMiddleware:
    """WSGI middleware answering GET /__pg_counts before Flask routes."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") == "/__pg_counts":
            with _lock:
                body = json.dumps(counts, separators=(",", ":")).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self.wsgi_app(environ, start_response)


app.wsgi_app = CountsMiddleware(app.wsgi_app)


class QuietRequestHandler(WSGIRequestHandler):
    """No per-request access log and no per-bad-request error line."""

    def log_request(self, code="-", size="-"):
        # werkzeug's version parses the target first (uri_to_iri) and can raise,
        # e.g. on "http://h:99999/...", losing the response of a handler that ran.
        pass

    def log(self, type, message, *args):  # noqa: A002 - werkzeug's signature
        pass


def main():
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # make_server has already bound and listened, so connections are accepted now.
    print(f"LISTENING {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
