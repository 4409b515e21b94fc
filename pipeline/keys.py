"""Sample keys: one dot-free, stable, distinct key per (YouTube id, start) pair."""

from __future__ import annotations

import hashlib
import math
import re

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
_HASHED_ID = re.compile(r".*-h[0-9a-f]{16}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_ENDS_LIKE_START = re.compile(r"_[0-9]*\Z")


def _key_id(ytid: str) -> str:
    """``ytid`` unchanged when it is key-safe, else a readable form plus a hash of the original.

    Clean IDs that already look hashed are hashed too, so a hashed form never equals
    another ID's unchanged form.
    """
    if _SAFE_ID.fullmatch(ytid) and not _HASHED_ID.fullmatch(ytid):
        return ytid
    digest = hashlib.sha1(ytid.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{_UNSAFE_CHAR.sub('-', ytid)}-h{digest}"


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def make_key(ytid: str, start: float | None) -> str:
    """The sample key of a clip: ``"{ytid}_{start in integer ms}"``, e.g. ``"--4gqARaEJE_30000"``.

    WebDataset cuts keys at the first dot and tar names split at '/', so keys hold only
    ``[A-Za-z0-9_-]``: an ID with other characters becomes a readable form plus 16 hex
    digits of its SHA-1. With ``start`` None the key is the ID alone, plus a trailing
    '_' when it ends like ``_<digits>``, so it never equals another ID's key with a start.
    Distinct (ytid, start ms) pairs give distinct keys (up to a 64-bit hash collision,
    which the readers would report as a duplicate).
    """
    part = _key_id(ytid)
    if start is None:
        return part + "_" if _ENDS_LIKE_START.search(part) else part
    if not math.isfinite(start) or start < 0:
        raise ValueError(f"start must be a finite number of seconds >= 0, got {start!r}")
    return f"{part}_{to_ms(start)}"
