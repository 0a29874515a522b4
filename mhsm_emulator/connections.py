"""Per-connection hooks uvicorn does not offer: counting accepted connections and resetting one.

ASGI gives an app no handle on its socket, so a uvicorn protocol subclass records each transport
under the peer address that the ASGI scope carries as `client`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class Connections:
    def __init__(self, on_accept: Callable[[], None]) -> None:
        self._by_peer: dict[tuple[str, int], asyncio.Transport] = {}
        self._on_accept = on_accept

    def protocol(self) -> type[HttpToolsProtocol]:
        registry = self

        class TrackedProtocol(HttpToolsProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if self.client:
                    registry._by_peer[self.client] = transport
                registry._on_accept()

            def connection_lost(self, exc: Exception | None) -> None:
                if self.client:
                    registry._by_peer.pop(self.client, None)
                super().connection_lost(exc)

        return TrackedProtocol

    def reset(self, peer: tuple[str, int] | None) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed front end would."""
        transport = self._by_peer.get(tuple(peer)) if peer else None  # type: ignore[arg-type]
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
