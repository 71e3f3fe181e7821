"""A small fault-injecting HTTP proxy between the appliance and moto (127.0.0.1 only).

Each accepted connection is relayed to the upstream server request by request. ``fault`` says
what happens to the next matching requests: ``500`` and ``503`` (S3's SlowDown XML) answer
instead of forwarding, ``403`` answers as S3 does to a wrong key; ``delay`` holds the response past the client's timeout; ``drop``
forwards the request, then sends half of the response body and closes the socket;
``refuse`` closes the connection without an answer (S3 unreachable). ``count`` bounds how many
requests are hit (None: until cleared); ``methods`` limits the fault to those HTTP methods.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import http.client

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
FORBIDDEN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
    b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


# Status line reason and XML body of each fault answered instead of forwarding.
ANSWERS = {
    "403": ("Forbidden", FORBIDDEN),
    "500": ("Internal Server Error", INTERNAL),
    "503": ("Slow Down", SLOWDOWN),
}


class FaultProxy:
    """Relay to ``upstream_port``; inject the configured fault."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._left: int | None = None
        self._methods: set[str] | None = None
        self.delay_seconds = 3.0
        # Strip If-None-Match/If-Match from requests: a store without conditional writes.
        self.ignore_conditions = False
        self.hits = 0
        self.requests = 0
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.rfile, self.connection)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        """Begin accepting connections."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()

    def fault(self, kind: str | None, count: int | None = None, methods: set[str] | None = None) -> None:
        """Inject ``kind`` into the next ``count`` requests (of ``methods``); None clears."""
        with self._lock:
            self._fault, self._left, self._methods = kind, count, methods
            self.hits = 0

    def _take(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self._fault is None or (self._methods and method not in self._methods):
                return None
            if self._left is not None:
                if self._left <= 0:
                    return None
                self._left -= 1
            self.hits += 1
            return self._fault

    def _serve(self, rfile, sock: socket.socket) -> None:  # noqa: ANN001
        while True:
            line = rfile.readline(65537)
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers: list[tuple[str, str]] = []
            length = 0
            while True:
                raw = rfile.readline(65537).decode("latin-1")
                if raw in ("\r\n", "\n", ""):
                    break
                name, value = raw.split(":", 1)
                headers.append((name.strip(), value.strip()))
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if any(n.lower() == "expect" and v.lower() == "100-continue" for n, v in headers):
                # botocore waits for this before sending a PUT's body; answer as S3 does.
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                headers = [(n, v) for n, v in headers if n.lower() != "expect"]
            body = rfile.read(length) if length else b""
            if self.ignore_conditions:
                headers = [
                    (n, v) for n, v in headers if n.lower() not in ("if-none-match", "if-match")
                ]
            fault = self._take(method)
            if fault == "refuse":
                sock.close()
                return
            if fault in ANSWERS:
                reason, payload = ANSWERS[fault]
                # A response to HEAD has no body: bytes sent after it would be read as the
                # start of the next response on this connection.
                payload = b"" if method == "HEAD" else payload
                sock.sendall(
                    f"HTTP/1.1 {fault} {reason}\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
                )
                continue
            status, reason, out_headers, data = self._forward(method, target, headers, body)
            if fault == "delay":
                time.sleep(self.delay_seconds)
            head = f"HTTP/1.1 {status} {reason}\r\n"
            for name, value in out_headers:
                if name.lower() in ("transfer-encoding", "connection", "content-length"):
                    continue
                head += f"{name}: {value}\r\n"
            head += f"Content-Length: {len(data)}\r\n\r\n"
            try:
                if fault == "drop":
                    # Half the body (none of an empty one): the request landed, the answer is lost.
                    sock.sendall(head.encode() + data[: len(data) // 2] if data else b"")
                    sock.close()
                    return
                sock.sendall(head.encode() + data)
            except OSError:
                return

    def _forward(self, method, target, headers, body):  # noqa: ANN001, ANN202
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            conn.close()
