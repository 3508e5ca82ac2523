"""The HTTP side of ``gensynth paint``: a standard-library threading HTTP server on 127.0.0.1.

Routes (JSON errors are ``{"error": message}`` with status 400/403/404/413):

* ``GET /`` and ``GET /static/<file>``: the page (files shipped in ``gensynth/paint/static``; nothing from a CDN).
* ``GET /api/info``: dataset, classes (id, name, colour, raw id), canvas size, noise kind, style support.
* ``GET /api/sample/<i>``: the i-th label map given with ``--labels`` as ``{"name", "width", "height", "ids"}``.
* ``POST /api/labels``: body = a label file as training reads it (an id PNG of the dataset's raw ids, or a colour
  mask in its class colours) -> ``{"width", "height", "ids"}`` (model ids).
* ``POST /api/labelmap``: JSON ``{"width", "height", "ids"}`` -> the id PNG ``gensynth generate --labels`` reads.
* ``POST /api/generate``: JSON :class:`gensynth.paint.session.GenerateRequest` -> PNG image; headers
  ``X-Model-Ms`` and ``X-Encode-Ms`` carry the server-side milliseconds.

``ids`` are base64 of (H, W) uint16 little-endian model class ids. When bound to a loopback address the server
answers only requests whose ``Host`` header names a loopback host (a web page elsewhere cannot reach it through
DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import json
import mimetypes
import re
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gensynth.errors import GensynthError
from gensynth.paint.protocol import MAX_SIDE, GenerateRequest, decode_grid, encode_grid
from gensynth.paint.session import PaintSession

MAX_BODY = 64 * 1024 * 1024  # bytes; a 2048x2048 uint16 map in base64 plus a style image fits
STATIC_FILES = {"index.html", "app.js", "style.css"}
_SAMPLE = re.compile(r"^/api/sample/(\d+)$")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class LabelGrid(BaseModel):
    """JSON body of ``POST /api/labelmap``."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    ids: str


class RequestError(Exception):
    """An error answered with ``status`` and a JSON message."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def static_file(name: str) -> bytes:
    """The bytes of a page file shipped in the package; RequestError(404) for any other name."""
    if name not in STATIC_FILES:
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such file: /static/{name}")
    return (resources.files("gensynth.paint") / "static" / name).read_bytes()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class PaintHandler(BaseHTTPRequestHandler):
    """One request. ``self.server`` is a :class:`PaintServer` (its ``session`` does the work)."""

    server: "PaintServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            sys.stderr.write(f"paint: {self.address_string()} {format % args}\n")

    # ------------------------------------------------------------------------------------------
    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True  # a request body may be left unread: do not parse it as the next request
        self._json({"error": message}, status)

    def _check_host(self) -> None:
        if not self.server.loopback_only:
            return
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower() not in _LOOPBACK_NAMES and not is_loopback(name):
            raise RequestError(HTTPStatus.FORBIDDEN, f"Host {host!r} is not a loopback address; this server only "
                                                     f"answers pages loaded from 127.0.0.1 or localhost")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "the request has no Content-Length")
        try:
            n = int(length)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"request body of {n} bytes exceeds the limit of {MAX_BODY} bytes")
        return self.rfile.read(n)

    def _json_body(self, model: type[BaseModel]):
        body = self._body()
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, validation_message(exc)) from None

    def _dispatch(self, fn) -> None:
        try:
            self._check_host()
            fn()
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except GensynthError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # a bug: say so on the page and keep serving
            traceback.print_exc()
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802 - http.server's name
        self._dispatch(self._get)

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self):  # noqa: N802
        self._dispatch(self._post)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        session = self.server.session
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, static_file("index.html"), "text/html; charset=utf-8")
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
            data = static_file(name)
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            self._send(HTTPStatus.OK, data, ctype + ("; charset=utf-8" if ctype.startswith("text/") or
                                                      ctype.endswith("javascript") else ""))
        elif path == "/api/info":
            self._json(session.info())
        elif m := _SAMPLE.match(path):
            i = int(m.group(1))
            if i >= len(session.initial):
                raise RequestError(HTTPStatus.NOT_FOUND, f"no label map {i}: {len(session.initial)} were given "
                                                         f"with --labels")
            name, ids = session.initial[i]
            self._json({"name": name, "height": int(ids.shape[0]), "width": int(ids.shape[1]),
                        "ids": encode_grid(ids)})
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        session = self.server.session
        if path == "/api/generate":
            req = self._json_body(GenerateRequest)
            image, timing = session.generate(req)
            png = session.image_png(image, timing)
            self._send(HTTPStatus.OK, png, "image/png",
                       {"X-Model-Ms": f"{timing.model_ms:.1f}", "X-Encode-Ms": f"{timing.encode_ms:.1f}"})
        elif path == "/api/labels":
            name = self.headers.get("X-Filename", "(uploaded)")[:200]
            ids = session.read_label_png(self._body(), where=repr(name))
            self._json({"height": int(ids.shape[0]), "width": int(ids.shape[1]), "ids": encode_grid(ids)})
        elif path == "/api/labelmap":
            grid = self._json_body(LabelGrid)
            ids = decode_grid(grid.ids, grid.height, grid.width, "label ids")
            self._send(HTTPStatus.OK, session.label_png(ids), "image/png",
                       {"Content-Disposition": 'attachment; filename="gensynth_labels.png"'})
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}")


class PaintServer(ThreadingHTTPServer):
    """The painting page's server: a :class:`PaintSession` behind :class:`PaintHandler`."""

    daemon_threads = True

    def __init__(self, session: PaintSession, host: str = "127.0.0.1", port: int = 7860, verbose: bool = False):
        if ":" in host:  # an IPv6 literal
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((host, port), PaintHandler)
        self.session = session
        self.verbose = verbose
        self.loopback_only = is_loopback(host) or host == "localhost"

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start_background(self) -> threading.Thread:
        """Serve in a daemon thread (tests, benchmarks); stop with ``shutdown()`` then ``server_close()``."""
        t = threading.Thread(target=self.serve_forever, name="gensynth-paint", daemon=True)
        t.start()
        return t
