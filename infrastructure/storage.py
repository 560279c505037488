"""Object storage behind the :class:`application.ports.BlobStore` port: local files by default."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"{key!r} is outside the store")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:  # noqa: ARG002
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)  # whole files only: write, then rename
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(tmp).replace(path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()
