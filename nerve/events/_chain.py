"""The hash chain that makes the log tamper-evident.

Each row's hash is sha256(previous hash || the row's content), so altering,
inserting or deleting any row breaks the chain from that row on. The content is
encoded as a JSON array, which is unambiguous (no field can bleed into the next).
"""

from __future__ import annotations

import hashlib
from typing import Final

import orjson

GENESIS: Final = bytes(32)
"""The "previous hash" of position 1."""

_dumps = orjson.dumps
_sha256 = hashlib.sha256


def row_hash(
    prev: bytes,
    position: int,
    stream: str,
    version: int,
    type: str,
    type_version: int,
    source: str,
    ts: int,
    payload: str | None,
    blob: str | None,
    meta: str | None,
) -> bytes:
    """The chained hash of one row."""
    content = _dumps(
        [position, stream, version, type, type_version, source, ts, payload, blob, meta]
    )
    return _sha256(prev + content).digest()
