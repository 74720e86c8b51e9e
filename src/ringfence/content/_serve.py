"""`ringfence content serve`: the repository's static files over HTTP, for tests and small setups. Any web
server or CDN serves the same files; nothing here is part of the trust (the client checks signatures)."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import socket
from typing import Any

from ringfence.content._errors import ContentError

log = logging.getLogger(__name__)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("serve: " + format, *args)  # noqa: G003


class _V4Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _V6Server(_V4Server):
    address_family = socket.AF_INET6


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ContentError(f"--listen {listen!r}: expected HOST:PORT, like 127.0.0.1:8470")
    return host.strip("[]") or "127.0.0.1", int(port)


def make_server(directory: str, listen: str = "127.0.0.1:8470") -> http.server.ThreadingHTTPServer:
    """A bound server for `directory` (start it with serve_forever(); stop with shutdown())."""
    if not os.path.isdir(os.path.join(directory, "metadata")):
        raise ContentError(
            f"{directory}: not a content repository (no metadata/; run `content publish` first)"
        )
    host, port = parse_listen(listen)
    handler = functools.partial(_Quiet, directory=directory)
    try:
        server = _V6Server((host, port), handler) if ":" in host else _V4Server((host, port), handler)
    except OSError as e:
        raise ContentError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return server
