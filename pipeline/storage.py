"""Where outputs live: local paths, shared mounts and object stores through ``pyarrow.fs``.

Every job path (``--out``, ``--train``, ``--eval``) may be a plain path or a URI such as
``s3://bucket/prefix``. Completeness is what makes a shard visible: on a local or mounted
file system a file is written under a hidden temporary name and renamed; on an object store
the object appears only when its upload completes, so the file is staged locally first and
uploaded in one piece.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    """A directory on some file system; ``join`` builds paths below it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def child(self, *parts: str) -> Location:
        sep = "" if self.uri.endswith("/") else "/"
        return Location(self.fs, self.join(*parts), self.uri + sep + "/".join(parts))


def locate(uri: str | os.PathLike) -> Location:
    """Parse a path or URI. Local paths are made absolute so Ray workers see the same file."""
    text = os.fspath(uri)
    if "://" not in text:
        text = str(Path(text).expanduser().resolve())
    fs, path = pafs.FileSystem.from_uri(text)
    return Location(fs, path, text)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_files(fs: pafs.FileSystem, path: str, suffix: str = "") -> list[str]:
    """Sorted full paths of the files directly in ``path`` whose name ends with ``suffix``."""
    if not is_dir(fs, path):
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                  and not i.base_name.startswith("."))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


@contextlib.contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[BinaryIO]:
    """A file object whose content appears at ``path`` only if the block ends without error.

    Local: a hidden temporary file in the same directory, fsynced and renamed over ``path``.
    Elsewhere: a local temporary file uploaded on success (an upload is all-or-nothing).
    """
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    name = path.rsplit("/", 1)[1]
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    with tempfile.NamedTemporaryFile(suffix=".part") as f:
        yield f
        f.flush()
        f.seek(0)
        try:
            with fs.open_output_stream(path) as out:
                shutil.copyfileobj(f, out, 1 << 22)
        except BaseException:
            # pyarrow's S3 stream completes the upload when its block exits, even on an error:
            # take the partial object back down.
            with contextlib.suppress(Exception):
                fs.delete_file(path)
            raise


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with atomic_output(fs, path) as f:
        f.write(data)


def remove_stale_temporaries(fs: pafs.FileSystem, path: str) -> int:
    """Delete temporaries a killed writer left in ``path``; returns how many."""
    if not isinstance(fs, pafs.LocalFileSystem) or not is_dir(fs, path):
        return 0
    stale = [e.path for e in os.scandir(path) if e.name.startswith(".") and ".tmp-" in e.name]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    return len(stale)
