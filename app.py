"""A local web page to add parts to your music: upload a context (or take the built-in example), choose the
instruments, generate, then listen, look and download (audio in the context's format, and MIDI).

    python app.py                                   # http://127.0.0.1:7860, the shipped checkpoints/stemgen-music.pt
    python app.py --checkpoint runs/default/ckpt.pt --port 8000

The page is one HTML file with plain JavaScript (page/app.html), served by the standard library's http.server:
nothing to install beyond the project's requirements. This file is the HTTP side and the command; what runs
the generations is page/engine.py (one at a time, by a single worker thread, the rest queued; past
MAX_QUEUE waiting, a request is refused with a busy message), and the files the page fetches are
page/files.py's.

Uploads and outputs live in one temporary folder, removed when the server stops (Ctrl-C or SIGTERM): a
generation in progress is stopped at its next decoding step first. A bad upload (empty, not audio, corrupt,
silent, longer than --max-seconds or larger than --max-mb) gets one message and leaves no file behind.
The server binds to 127.0.0.1 unless --host says otherwise; it has no authentication, so do not expose it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import codec as codec_lib
from notes import transcriber
from training.checkpoint import SHIPPED_CHECKPOINT, CheckpointError
from cli.common import USER_ERROR
from page.engine import Engine
from page.requests import MAX_MB, MAX_SECONDS, BusyError, UserError

DEFAULT_APP_CHECKPOINT = SHIPPED_CHECKPOINT  # the model shipped in the repository (README "The shipped model")
DEFAULT_PORT = 7860
SHIPPED_MISSING = (" (the shipped checkpoint is missing from this copy: train one with `python train.py` and pass "
                   "--checkpoint runs/default/best.pt)")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page", "app.html")


# ---------------------------------------------------------------------------------------------------------
# HTTP

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PAGE_HEADER = "X-StemGen-Page"   # every POST carries it: a custom header, so a foreign page's POST needs a CORS
#                                  preflight, which this server never grants
MAX_CONNECTIONS = 32             # requests handled at once; more get a busy answer instead of another thread


class Handler(BaseHTTPRequestHandler):
    engine: Engine = None   # set on the subclass make_server builds
    hosts: set = LOOPBACK   # the Host names this page answers to: loopback, and --host when one is given
    server_version = "StemGen"
    timeout = 60            # seconds a client may stall mid-request

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):   # the client went away: nothing to answer
            pass

    def _foreign(self) -> str | None:
        """Why a request comes from outside this machine's own page (None: it does not): a Host that is not one of
        ours (DNS rebinding), or an Origin or fetch site of another page."""
        host = urllib.parse.urlsplit("//" + (self.headers.get("Host") or "")).hostname
        if host not in self.hosts:
            return f"this page answers to {', '.join(sorted(self.hosts))} only"
        origin = self.headers.get("Origin")
        if origin is not None and (urllib.parse.urlsplit(origin).hostname not in self.hosts
                                   or urllib.parse.urlsplit(origin).port != self.server.server_address[1]):
            return "requests from other pages are refused"
        if self.headers.get("Sec-Fetch-Site") == "cross-site":
            return "requests from other pages are refused"
        return None

    def log_message(self, format, *args):   # quiet: the terminal shows errors, not every poll
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _file(self, path: str, ctype: str, name: str | None = None) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, "That file is gone (the server may have restarted).")
        extra = {"Accept-Ranges": "bytes"}
        if name:
            extra["Content-Disposition"] = f"inline; filename*=UTF-8''{urllib.parse.quote(name)}"
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
        if rng and data and (rng.group(1) or rng.group(2)):   # what <audio> asks for to seek
            a, b = rng.groups()
            start = int(a) if a else max(0, len(data) - int(b))
            end = min(len(data) - 1, int(b)) if a and b else len(data) - 1
            if start >= len(data) or start > end:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", ctype,
                                  {"Content-Range": f"bytes */{len(data)}"})
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(HTTPStatus.PARTIAL_CONTENT, data[start:end + 1], ctype, extra)
        self._send(HTTPStatus.OK, data, ctype, extra)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        why = self._foreign()
        if why:
            return self._error(HTTPStatus.FORBIDDEN, f"Forbidden: {why}.")
        try:
            if not parts or parts == ["index.html"]:
                return self._file(STATIC, "text/html; charset=utf-8")
            if parts == ["api", "info"]:
                return self._json(HTTPStatus.OK, self.engine.info())
            if len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                status = self.engine.status(parts[2])
                if status is None:
                    return self._error(HTTPStatus.NOT_FOUND, "No such generation (the server may have restarted).")
                return self._json(HTTPStatus.OK, status)
            if len(parts) == 4 and parts[:2] == ["api", "midi"] and parts[3].isdigit():
                path, name = self.engine.midi(parts[2], int(parts[3]))
                return self._file(path, "audio/midi", name)
            if len(parts) == 4 and parts[:2] == ["api", "notes"] and parts[3].isdigit():
                path, name = self.engine.notes(parts[2], int(parts[3]))
                return self._file(path, "audio/wav", name)
            if len(parts) >= 2 and parts[0] == "files":
                found = self.engine.store.get(parts[1])
                if found is None:
                    return self._error(HTTPStatus.NOT_FOUND, "No such file (the server may have restarted).")
                return self._file(*found)
            return self._error(HTTPStatus.NOT_FOUND, f"Nothing at {url.path}.")
        except UserError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except transcriber.TranscriberUnavailable as e:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
        except Exception as e:
            print(f"error: GET {url.path}: {e!r}", file=sys.stderr)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"Server error: {e}")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        why = self._foreign() or (None if self.headers.get(PAGE_HEADER) == "1" else
                                  f"a POST must come from the page itself (header {PAGE_HEADER})")
        if why:
            self.close_connection = True                         # the body is not read
            return self._error(HTTPStatus.FORBIDDEN, f"Forbidden: {why}.")
        parts = [p for p in url.path.split("/") if p]
        try:
            if len(parts) == 3 and parts[:2] == ["api", "cancel"]:
                return self._json(HTTPStatus.OK, self.engine.cancel(parts[2]))
            if url.path == "/api/upload":
                if length > self.engine.max_bytes:
                    self.close_connection = True                 # the body is not read
                ctx = self.engine.add_upload(query.get("name", ["context"])[0], self.rfile, length)
                return self._json(HTTPStatus.OK, ctx.describe())
            if url.path == "/api/example":
                return self._json(HTTPStatus.OK, self.engine.example().describe())
            if url.path == "/api/generate":
                if not 0 < length <= 65536:
                    raise UserError("A generation request is a small JSON object.")
                try:
                    options = json.loads(self.rfile.read(length))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    raise UserError("A generation request is a small JSON object.") from None
                if not isinstance(options, dict):
                    raise UserError("A generation request is a small JSON object.")
                return self._json(HTTPStatus.OK, self.engine.status(self.engine.submit(options).id))
            return self._error(HTTPStatus.NOT_FOUND, f"Nothing at {url.path}.")
        except BusyError as e:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
        except UserError as e:
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > self.engine.max_bytes
                               else HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:
            print(f"error: POST {url.path}: {e!r}", file=sys.stderr)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"Server error: {e}")


class Server(ThreadingHTTPServer):
    """http.server's threading server with a longer listen backlog (parallel clients wait rather than being
    reset) and at most MAX_CONNECTIONS requests handled at once (the rest answered busy at once)."""
    request_queue_size = 64
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                body = b'{"error": "Busy: too many requests at once. Try again."}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> Server:
    """An HTTP server for the engine (port 0: a free port); call serve_forever(), then shutdown(). It answers to
    loopback Host names, and to `host` too when that is not a loopback address."""
    handler = type("StemGenHandler", (Handler,), {"engine": engine, "hosts": LOOPBACK | {host.strip("[]")}})
    return Server((host, port), handler)


def address(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


# ---------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local web page for StemGen: upload a context, choose instruments, "
                                            "generate, listen, see and download the new stems (audio and MIDI).")
    p.add_argument("--checkpoint", default=DEFAULT_APP_CHECKPOINT, metavar="PATH",
                   help=f"model checkpoint (default: the shipped one, {DEFAULT_APP_CHECKPOINT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; the page has no login)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                   help=f"port, 0 to 65535 (default: {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help=f"longest context accepted, in seconds (default: {MAX_SECONDS:g})")
    p.add_argument("--max-mb", type=float, default=MAX_MB,
                   help=f"largest upload accepted, in MB (default: {MAX_MB:g})")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--codec-weights", metavar="PATH",
                   help="where the checkpoint's codec weights are on this machine, when its stored path does not "
                        "exist here (as generate.py --codec-weights)")
    return p


def host_warning(host: str) -> str | None:
    """What --host must say when it serves the page beyond this machine (None for a loopback address)."""
    if host.strip("[]") in LOOPBACK:
        return None
    return (f"warning: --host {host} serves the page beyond this machine: anyone who can reach its port can "
            f"upload, generate and download, and the page has no login. It answers to the Host names "
            f"{', '.join(sorted(LOOPBACK | {host}))} only: give the name or address others will use.")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 0 to 65535")
    return port


def interrupt(signum, frame):
    """Ctrl-C and SIGTERM stop the server through the same clean-up."""
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        engine = Engine(args.checkpoint, args.device, args.codec_weights, args.max_seconds, args.max_mb)
    except (CheckpointError, codec_lib.CodecUnavailable, ValueError) as e:
        shipped_missing = args.checkpoint == DEFAULT_APP_CHECKPOINT and not os.path.isfile(args.checkpoint)
        print(f"error: {e}{SHIPPED_MISSING if shipped_missing else ''}", file=sys.stderr)
        return USER_ERROR
    try:
        try:
            server = make_server(engine, args.host, args.port)
        except OSError as e:
            print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror} (try --port 0)", file=sys.stderr)
            return USER_ERROR
        warning = host_warning(args.host)
        if warning:
            print(warning, file=sys.stderr)
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)     # even where it was started with SIGINT ignored (cmd &)
        print(f"StemGen page at {address(server)} (checkpoint {args.checkpoint}; temporary files in "
              f"{engine.store.root}, removed at exit). Ctrl-C stops it.", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            server.server_close()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
