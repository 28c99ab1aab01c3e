"""The baseline for ``bench/hot_path.py``: a bare granian ASGI app (no framework) serving the same
bytes condagate serves, from the folder named by ``BARE_ROOT``.

Small files (repodata, shards) are read once and answered with ``http.response.start`` + one body;
package files (``.conda``, ``.tar.bz2``) with ``http.response.pathsend`` (granian sends the file).
The ETag is the file's sha256; ``If-None-Match`` with it answers 304, as condagate does.

    BARE_ROOT=/some/www granian --interface asgi --workers 1 bare_granian_app:app
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BARE_ROOT", "."))
_PACKAGE_SUFFIXES = (".conda", ".tar.bz2")
_small: dict[str, tuple[bytes, bytes]] = {}  # path -> (body, etag)
_large: dict[str, tuple[str, bytes, bytes]] = {}  # path -> (file path, etag, size)


def _lookup(path: str) -> tuple[bytes | str, bytes, bytes] | None:
    found = _small.get(path)
    if found is not None:
        return found[0], found[1], str(len(found[0])).encode()
    large = _large.get(path)
    if large is not None:
        return large
    target = (ROOT / path.lstrip("/")).resolve()
    if not target.is_relative_to(ROOT.resolve()) or not target.is_file():
        return None
    data = target.read_bytes()
    etag = f'"{hashlib.sha256(data).hexdigest()}"'.encode()
    if path.endswith(_PACKAGE_SUFFIXES):
        _large[path] = (str(target), etag, str(len(data)).encode())
        return _large[path]
    _small[path] = (data, etag)
    return data, etag, str(len(data)).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    found = _lookup(scope["path"])
    if found is None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body, etag, length = found
    for name, value in scope["headers"]:
        if name == b"if-none-match" and value == etag:
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]})
            await send({"type": "http.response.body", "body": b""})
            return
    headers = [(b"content-type", b"application/octet-stream"), (b"etag", etag), (b"content-length", length)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if isinstance(body, str):
        await send({"type": "http.response.pathsend", "path": body})
    else:
        await send({"type": "http.response.body", "body": body})
