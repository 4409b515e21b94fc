"""Where outputs live: local paths, shared mounts and object stores through ``pyarrow.fs``.

Every job path (``--out``, ``--train``, ``--eval``) may be a plain path or a URI such as
``s3://bucket/prefix``. Completeness is what makes a shard visible: on a local or mounted
file system a file is written under a hidden temporary name and renamed; on an object store
the object appears only when its upload completes, so the file is staged locally first and
uploaded in one piece.

Object stores have no directories: nothing here creates one there (pyarrow's ``create_dir``
writes an empty ``prefix/`` marker object, which file-backed S3 servers refuse once the folder
exists). A URI may carry pyarrow's query options (``s3://b/p?endpoint_override=HOST:PORT&scheme=http``):
paths are joined before the query, and records and messages show ``Location.shown``, the URI
without query or user info, so endpoints and keys never land in a file or a log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

# pyarrow's AWS SDK streams uploads with trailing checksums, which many S3-compatible servers
# (rclone, older MinIO, Ceph) answer with HTTP 411; "when_required" sends plain uploads, and AWS
# itself accepts both.
S3_COMPAT_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                 "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}


def s3_compat_env() -> dict[str, str]:
    """Default ``S3_COMPAT_ENV`` in this process where the user set nothing, and return the values
    for the Ray workers' runtime_env (they are settings, not credentials). Call before any S3 use:
    the SDK reads them when a file system is made."""
    for key, value in S3_COMPAT_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in S3_COMPAT_ENV}


OBJECT_STORES = ("s3", "gcs", "abfs")  # pyarrow type names of stores where folders are only key prefixes


class ObjectStoreError(OSError):
    """A request to an object store failed; the message is one line naming the URI and the operation."""


def shown(uri: str) -> str:
    """``uri`` as records and messages show it: without query options or ``user:secret@``."""
    if "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@contextlib.contextmanager
def _request(fs: pafs.FileSystem, path: str, operation: str) -> Iterator[None]:
    """Turn an object store's failure into one ``ObjectStoreError`` line; local errors and a missing
    file pass unchanged (callers handle those)."""
    try:
        yield
    except (FileNotFoundError, ObjectStoreError):
        raise
    except OSError as err:
        if isinstance(fs, pafs.LocalFileSystem):
            raise
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ObjectStoreError(f"{operation} {fs.type_name}://{path} failed: {cause}") from None


@dataclass(frozen=True)
class Location:
    """A directory on some file system; ``join`` builds paths below it."""

    fs: pafs.FileSystem
    path: str
    uri: str  # as given, query options included: what another process needs to reach it

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def shown(self) -> str:
        return shown(self.uri)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def child(self, *parts: str) -> Location:
        # The parts go before a URI's query; a local path keeps a "?" in a file name as it is.
        base, mark, query = self.uri.partition("?") if "://" in self.uri else (self.uri, "", "")
        sep = "" if base.endswith("/") else "/"
        return Location(self.fs, self.join(*parts), base + sep + "/".join(parts) + mark + query)


def locate(uri: str | os.PathLike) -> Location:
    """Parse a path or URI. Local paths are made absolute so Ray workers see the same file."""
    text = os.fspath(uri)
    if "://" not in text:
        text = str(Path(text).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except OSError as err:
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ObjectStoreError(f"opening {shown(text)} failed: {cause}") from None
    return Location(fs, path, text)


def file_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    with _request(fs, path, "looking up"):
        return fs.get_file_info(path)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type == pafs.FileType.Directory


def list_files(fs: pafs.FileSystem, path: str, suffix: str = "") -> list[str]:
    """Sorted full paths of the files directly in ``path`` whose name ends with ``suffix``."""
    if not is_dir(fs, path):
        return []
    with _request(fs, path, "listing"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                  and not i.base_name.startswith("."))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with _request(fs, path, "reading"), fs.open_input_stream(path) as f:
        return f.read()


def remove(fs: pafs.FileSystem, path: str) -> None:
    with _request(fs, path, "deleting"):
        fs.delete_file(path)


@contextlib.contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[BinaryIO]:
    """A file object whose content appears at ``path`` only if the block ends without error.

    Local: a hidden temporary file in the same directory, fsynced and renamed over ``path``.
    Elsewhere: a local temporary file uploaded on success (an upload is all-or-nothing).
    """
    parent, name = path.rsplit("/", 1)
    if fs.type_name not in OBJECT_STORES:  # local, HDFS, pyarrow's in-memory stand-in: folders first
        fs.create_dir(parent, recursive=True)
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
            with _request(fs, path, "uploading"), fs.open_output_stream(path) as out:
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


class _WithoutFolders(pafs.FileSystemHandler):
    """An object store whose ``create_dir`` creates nothing: for libraries that make folders before
    they write (Ray Train's run state and checkpoints, pyarrow's ``copy_files``). On an object store a
    key needs no folder above it, and the ``prefix/`` marker pyarrow would write instead is refused
    by file-backed servers once the folder exists. Every other call goes to the store itself."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs = fs

    def __reduce__(self):  # Ray pickles the run's storage to its controller and workers
        return _WithoutFolders, (self.fs,)

    def equals(self, other: pafs.FileSystem) -> bool:  # ``other``: the PyFileSystem around a handler
        handler = getattr(other, "handler", None)
        return isinstance(handler, _WithoutFolders) and self.fs.equals(handler.fs)

    def get_type_name(self) -> str:
        return f"{self.fs.type_name}-without-folders"

    def create_dir(self, path: str, recursive: bool) -> None:
        pass

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to empty a whole object store")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def without_folders(loc: Location) -> pafs.FileSystem:
    """``loc``'s file system for a library that creates folders before it writes: on an object store,
    one whose ``create_dir`` does nothing (``_WithoutFolders``); anywhere else, the file system itself."""
    if loc.fs.type_name not in OBJECT_STORES:
        return loc.fs
    return pafs.PyFileSystem(_WithoutFolders(loc.fs))


def upload_folder(local: str | os.PathLike, dest: Location) -> None:
    """Put each file directly in the local folder ``local`` at ``dest``, under its own name."""
    for entry in sorted(os.scandir(local), key=lambda e: e.name):
        if entry.is_file():
            write_bytes(dest.fs, dest.join(entry.name), Path(entry.path).read_bytes())


@contextlib.contextmanager
def local_folder(dest: Location) -> Iterator[str]:
    """A local folder whose files end up in ``dest``: ``dest`` itself where it is local, elsewhere a
    temporary folder uploaded when the block ends without error (for writers that need a local path:
    matplotlib, TensorBoard)."""
    if dest.is_local:
        yield dest.path
        return
    with tempfile.TemporaryDirectory(prefix="pav-upload-") as staged:
        yield staged
        upload_folder(staged, dest)
