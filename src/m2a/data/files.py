"""Uploaded files' bytes on disk: ``<root>/<team_id>/<file_id>``, written whole or not at all.

A file is copied to a temporary name in its team's folder, flushed, and renamed into place, so a
crash never leaves a half-written file under a real id; the size is bounded while copying
(``FileTooLarge``). Ids are checked against their pattern before they become paths.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
COPY_CHUNK = 1 << 20


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


class FileBlobs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, team_id: int, file_id: str) -> Path:
        if not FILE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / str(int(team_id)) / file_id

    def write(self, team_id: int, file_id: str, source: BinaryIO, limit: int) -> int:
        """Copy ``source`` into place (blocking: run it in a thread); the number of bytes."""
        final = self.path(team_id, file_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".upload-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while piece := source.read(COPY_CHUNK):
                    size += len(piece)
                    if size > limit:
                        raise FileTooLarge(limit)
                    out.write(piece)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return size

    def read(self, team_id: int, file_id: str) -> bytes:
        return self.path(team_id, file_id).read_bytes()

    def open(self, team_id: int, file_id: str) -> BinaryIO:
        return self.path(team_id, file_id).open("rb")

    def delete(self, team_id: int, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(team_id, file_id).unlink()
