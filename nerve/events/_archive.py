"""The cold tier of the log: whole UTC days in ``archive/logs/YYYY-MM-DD.jsonl``.

Archiving is a move, not a deletion: `Log.read` and `Log.subscribe` stream the
archived days first, transparently. A day is exported to a temporary file,
fsynced and renamed into place; only then, in one transaction, are its rows
deleted and the watermark (``archive.position`` in ``meta``) advanced together
with the file's checksum. A crash between the two leaves the rows in the hot
table and an identical file is written again by the next run: nothing is lost
or duplicated.

A day is archived only once the log has left it (a later event exists, or the
log's clock is past the day's end), and the watermark records the end of the
archived day: later events, even from a clock that went back, are stamped
after it, so an archived day never gets more events and its file is written
once.

Each line is one event as stored, payload and meta kept as the exact JSON text
that the hash chain covers, so an archived day verifies like the hot table.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import apsw
import attrs
import orjson

from ._errors import ArchiveError

Row = tuple[Any, ...]
"""(position, stream, version, type, type_version, source, ts, payload, blob,
meta, hash) -- the column order of the ``logs`` table."""

ROW_COLUMNS = (
    "position, stream, version, type, type_version, source, ts, payload, blob, meta, "
    "hash"
)
DAY_MS = 86_400_000
_DAY_KEY = "archive.day."


@attrs.frozen
class ArchiveDay:
    """One archived UTC day: its positions and the file's checksum."""

    day: str
    first: int
    last: int
    count: int
    sha256: str

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "first": self.first,
                "last": self.last,
                "count": self.count,
                "sha256": self.sha256,
            }
        ).decode()

    @classmethod
    def from_meta(cls, key: str, value: str) -> ArchiveDay:
        d = orjson.loads(value)
        return cls(key[len(_DAY_KEY) :], d["first"], d["last"], d["count"], d["sha256"])


def day_of(ts_ms: int) -> str:
    """The UTC day (YYYY-MM-DD) of a millisecond timestamp."""
    return _dt.datetime.fromtimestamp(ts_ms / 1000, tz=_dt.UTC).strftime("%Y-%m-%d")


def day_bounds(ts_ms: int) -> tuple[int, int]:
    """The [start, end) milliseconds of the UTC day containing ``ts_ms``."""
    start = ts_ms - ts_ms % DAY_MS
    return start, start + DAY_MS


def archive_dir(data_dir: Path) -> Path:
    return data_dir / "archive" / "logs"


def day_path(data_dir: Path, day: str) -> Path:
    return archive_dir(data_dir) / f"{day}.jsonl"


def list_days(conn: apsw.Connection) -> list[ArchiveDay]:
    """The archived days recorded in ``meta``, oldest first."""
    rows = conn.execute(
        "SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY key",
        (_DAY_KEY, _DAY_KEY + "\U0010ffff"),
    ).fetchall()
    return [ArchiveDay.from_meta(k, v) for k, v in rows]


def encode_line(row: Row) -> bytes:
    (
        position,
        stream,
        version,
        type_,
        type_version,
        source,
        ts,
        payload,
        blob,
        meta,
        hash_,
    ) = row
    return orjson.dumps(
        {
            "position": position,
            "stream": stream,
            "version": version,
            "type": type_,
            "type_version": type_version,
            "source": source,
            "ts": ts,
            "payload": payload,
            "blob": blob,
            "meta": meta,
            "hash": bytes(hash_).hex(),
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def decode_line(line: bytes) -> Row:
    d = orjson.loads(line)
    return (
        d["position"],
        d["stream"],
        d["version"],
        d["type"],
        d["type_version"],
        d["source"],
        d["ts"],
        d["payload"],
        d["blob"],
        d["meta"],
        bytes.fromhex(d["hash"]),
    )


def write_day(data_dir: Path, day: str, rows: Iterable[Row]) -> ArchiveDay:
    """Write one day's rows durably; return its record for ``meta``.

    The file appears under its final name only once its bytes are on disk
    (temp file, fsync, rename, fsync of the directory), so a reader never sees
    a half-written day.
    """
    folder = archive_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = day_path(data_dir, day)
    tmp = folder / f".{day}.jsonl.tmp"
    digest = hashlib.sha256()
    first = last = count = 0
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for row in rows:
                line = encode_line(row)
                digest.update(line)
                f.write(line)
                if not count:
                    first = row[0]
                last = row[0]
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return ArchiveDay(day, first, last, count, digest.hexdigest())


def open_day(data_dir: Path, day: ArchiveDay) -> IO[bytes]:
    path = day_path(data_dir, day.day)
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ArchiveError(
            f"archive file {path} (positions {day.first}-{day.last}) is missing; "
            "restore it from a backup"
        ) from None


def iter_day(data_dir: Path, day: ArchiveDay, *, verify: bool = True) -> Iterator[Row]:
    """Yield a day's rows, after checking the file against its checksum.

    The whole file is checked before the first row is handed out: a reader
    must never receive rows of an altered day, even from its first pages.
    """
    if verify and file_checksum(data_dir, day) != day.sha256:
        raise ArchiveError(
            f"archive file {day_path(data_dir, day.day)} does not match its checksum; "
            "it was altered after archiving"
        )
    with open_day(data_dir, day) as f:
        for line in f:
            yield decode_line(line)


def file_checksum(data_dir: Path, day: ArchiveDay) -> str:
    digest = hashlib.sha256()
    with open_day(data_dir, day) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def day_meta_key(day: str) -> str:
    return _DAY_KEY + day
