"""The floor every host-CPU figure is held against: the least a Python process can spend on one sign
request. A raw TLS socket kept alive, the request written by hand, the answer read by its
Content-Length, JSON + base64 on both sides; no HTTP library, no retries, no checks.

Hand-written on purpose: it is the measuring stick, so it must do less than any client library
could, and the core (pycurl) is compared with it in the same run.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from bare_client import ALGORITHMS, DIGEST


class FloorSigner:
    """One kept-alive TLS connection; `sign(kind)` is one POST .../sign, answered 200."""

    def __init__(self, info: dict[str, Any], names: dict[str, str], bearer: str) -> None:
        url = urlsplit(info["url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.context = ssl.create_default_context(cafile=info["ca_file"])
        self.sock = self._connect()
        value = base64.urlsafe_b64encode(DIGEST).rstrip(b"=").decode()
        self.requests: dict[str, bytes] = {}
        for kind, name in names.items():
            status, body = self._exchange(f"GET /keys/{name}?api-version=7.5 HTTP/1.1\r\nHost: {self.host}\r\n"
                                          f"Authorization: Bearer {bearer}\r\n\r\n".encode())
            assert status == 200, status
            version = json.loads(body)["key"]["kid"].rstrip("/").split("/")[-1]
            payload = json.dumps({"alg": ALGORITHMS[kind], "value": value}).encode()
            self.requests[kind] = (f"POST /keys/{name}/{version}/sign?api-version=7.5 HTTP/1.1\r\nHost: {self.host}\r\n"
                                   f"Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n"
                                   f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(raw, server_hostname=self.host)

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the HSM closed the connection")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += self.sock.recv(65536)
        return int(head[9:12]), body

    def sign(self, kind: str) -> bool:
        status, body = self._exchange(self.requests[kind])
        signature = base64.urlsafe_b64decode(json.loads(body)["value"] + "==")
        return status == 200 and bool(signature)

    def close(self) -> None:
        self.sock.close()
