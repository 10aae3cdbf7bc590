"""Every bad input of the log: a clear error, and nothing already stored is lost.

Each test checks three things: the specific error class (and its place under
`nerve.NerveError`, plus the builtin it promises), a message that names the
culprit (stream, type, path, position, digest...), and that what was stored
before is still there, unchanged (the events, and for refused database files
their exact bytes).
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
import trio
import trio.testing

import nerve
from nerve import (
    AppendError,
    ArchiveError,
    BlobIntegrityError,
    BlobNotFoundError,
    CorruptDatabaseError,
    DatabaseError,
    DuplicateIdempotencyKey,
    EventDecodingError,
    EventEncodingError,
    EventRegistry,
    InvalidEventError,
    LogClosedError,
    MigrationChecksumError,
    NerveError,
    NewerSchemaError,
    NewEvent,
    NotADatabaseError,
    RecordedEvent,
    SchemaError,
    StorageFullError,
    UnknownEventTypeError,
    WrongExpectedVersion,
)

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


# --- helpers ---------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256); directories as 'dir'."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else sha256(p)
        for p in sorted(folder.rglob("*"))
    }


async def stored(log: nerve.Log, after: int = 0) -> list[RecordedEvent]:
    return [e async for e in log.read(after)]


async def write_events(data_dir: Path, n: int = 300) -> list[RecordedEvent]:
    """A log of ``n`` events (several pages of the logs table); returns them."""
    async with nerve.open_log(data_dir) as log:
        for i in range(n):
            await log.append(f"s{i % 5}", NewEvent("t.x", {"i": i, "pad": "x" * 200}))
        return await stored(log)


def assert_error(
    exc: BaseException, cls: type[BaseException], *builtins: type[BaseException]
) -> None:
    assert type(exc) is cls, f"{type(exc).__qualname__}: {exc}"
    assert isinstance(exc, NerveError)
    for b in builtins:
        assert isinstance(exc, b), f"{cls.__qualname__} should be a {b.__name__}"


async def refused_open(data_dir: Path, **kwargs: Any) -> BaseException:
    """Open ``data_dir``, expecting a refusal; return the error."""
    with pytest.raises(NerveError) as info:
        async with nerve.open_log(data_dir, **kwargs):
            pass  # pragma: no cover - the open must fail
    return info.value


def place(data_dir: Path, content: bytes) -> Path:
    """Put ``content`` where the log's database goes; return its path."""
    data_dir.mkdir()
    db = data_dir / "logs.db"
    db.write_bytes(content)
    return db


def sql(db: Path, *statements: str) -> None:
    """Run statements on a database file behind nerve's back."""
    conn = apsw.Connection(str(db))
    try:
        for s in statements:
            conn.execute(s).fetchall()
    finally:
        conn.close()


def leaf_pages(db: Path, table: str) -> tuple[list[int], int]:
    """The leaf pages of ``table`` in key order (oldest rows first), page size."""
    conn = apsw.Connection(str(db))  # read-write: close removes the -wal/-shm
    try:
        size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        pages = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
            "ORDER BY path",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    return [p[0] for p in pages], size


def overwrite_page(db: Path, page: int, size: int) -> None:
    data = bytearray(db.read_bytes())
    start = (page - 1) * size
    data[start : start + size] = bytes([0xAB]) * size
    db.write_bytes(bytes(data))


@attrs.frozen
class Opened:
    owner: str
    balance: int


@attrs.frozen
class Closed:
    reason: str


@attrs.frozen
class Price:
    amount: float


@attrs.frozen
class Unregistered:
    x: int


class Plain:
    """Not an attrs class."""


# --- files that are not a nerve log -----------------------------------------------


NOT_SQLITE = {
    "random-bytes": random.Random(7).randbytes(8192),
    "text": b"# my notes\nthis is not a database\n" * 40,
    "short-text": b"hi",
    "sqlite-header-then-garbage": b"SQLite format 3\x00"
    + random.Random(8).randbytes(4080),
}


@pytest.mark.parametrize("content", NOT_SQLITE.values(), ids=NOT_SQLITE.keys())
async def test_a_file_that_is_not_sqlite_is_refused_untouched(
    data_dir: Path, content: bytes
) -> None:
    db = place(data_dir, content)
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, NotADatabaseError)
    assert isinstance(err, DatabaseError)
    assert str(db) in str(err)
    assert err.path == db  # type: ignore[attr-defined]
    assert "not a SQLite database" in str(err)
    assert snapshot(data_dir) == before  # same bytes, no -wal/-shm left behind


async def test_a_file_that_is_not_sqlite_is_refused_when_named_directly(
    tmp_path: Path,
) -> None:
    db = tmp_path / "mine.db"
    db.write_bytes(NOT_SQLITE["text"])
    before = snapshot(tmp_path)

    err = await refused_open(db)

    assert_error(err, NotADatabaseError)
    assert str(db) in str(err)
    assert snapshot(tmp_path) == before


async def test_a_directory_where_logs_db_should_be_is_refused(data_dir: Path) -> None:
    db = data_dir / "logs.db"
    db.mkdir(parents=True)
    (db / "keep.txt").write_text("mine")
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, NotADatabaseError)
    assert str(db) in str(err)
    assert "directory" in str(err)
    assert snapshot(data_dir) == before


FOREIGN = {
    "other-tables": [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO users VALUES (1, 'ann')",
    ],
    "other-application-id": ["PRAGMA application_id = 1234"],
    "other-application-id-and-tables": [
        "PRAGMA application_id = 1234",
        "CREATE TABLE t (x)",
        "INSERT INTO t VALUES (1)",
    ],
    "other-tables-wal": [
        "PRAGMA journal_mode = WAL",
        "CREATE TABLE t (x)",
        "INSERT INTO t VALUES (1)",
    ],
}


@pytest.mark.parametrize("statements", FOREIGN.values(), ids=FOREIGN.keys())
async def test_a_sqlite_database_of_another_application_is_refused_untouched(
    data_dir: Path, statements: list[str]
) -> None:
    db = place(data_dir, b"")
    sql(db, *statements)
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, NotADatabaseError)
    assert str(db) in str(err)
    assert "not a nerve log database" in str(err)
    assert "application_id" in str(err)
    # Not even the journal mode was switched: the file is exactly as found.
    assert snapshot(data_dir) == before


# --- a corrupt nerve log ------------------------------------------------------------


async def test_a_corrupt_schema_page_is_refused_at_open_untouched(
    data_dir: Path,
) -> None:
    await write_events(data_dir)
    db = data_dir / "logs.db"
    (page,), size = leaf_pages(db, "schema_version")
    overwrite_page(db, page, size)
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, CorruptDatabaseError)
    assert isinstance(err, DatabaseError)
    assert str(db) in str(err)
    assert "corrupt" in str(err)
    assert snapshot(data_dir) == before


@pytest.mark.parametrize("keep", [0.5, 0.1], ids=["half", "tenth"])
async def test_a_truncated_log_is_refused_at_open_untouched(
    data_dir: Path, keep: float
) -> None:
    await write_events(data_dir)
    db = data_dir / "logs.db"
    data = db.read_bytes()
    db.write_bytes(data[: int(len(data) * keep)])
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, CorruptDatabaseError)
    assert str(db) in str(err)
    assert snapshot(data_dir) == before


async def test_a_log_with_a_garbled_header_is_refused_untouched(
    data_dir: Path,
) -> None:
    await write_events(data_dir)
    db = data_dir / "logs.db"
    data = bytearray(db.read_bytes())
    data[16:100] = bytes([0xFF]) * 84  # page size, versions, counters...
    db.write_bytes(bytes(data))
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, NotADatabaseError)
    assert str(db) in str(err)
    assert snapshot(data_dir) == before


async def test_a_corrupt_event_page_fails_the_read_clearly_untouched(
    data_dir: Path,
) -> None:
    events = await write_events(data_dir)
    db = data_dir / "logs.db"
    pages, size = leaf_pages(db, "logs")
    assert len(pages) > 5
    overwrite_page(db, pages[0], size)  # the oldest events, far from the head
    before = snapshot(data_dir)

    # The damaged page holds the oldest events: opening (which looks at the
    # newest) works, and so does reading past the damage.
    async with nerve.open_log(data_dir) as log:
        assert log.head == len(events)
        with pytest.raises(NerveError) as info:
            await stored(log)
        assert_error(info.value, CorruptDatabaseError)
        assert str(db) in str(info.value)
        assert await stored(log, after=len(events) - 5) == events[-5:]
        with pytest.raises(CorruptDatabaseError):
            await log.verify()

    assert snapshot(data_dir) == before


# --- schema versions ------------------------------------------------------------------


async def test_a_log_from_a_newer_nerve_is_refused_untouched(data_dir: Path) -> None:
    events = await write_events(data_dir, 10)
    db = data_dir / "logs.db"
    sql(db, "INSERT INTO schema_version VALUES (99, 'abc', 'from the future', 0)")
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, NewerSchemaError)
    assert isinstance(err, SchemaError)
    assert isinstance(err, DatabaseError)
    assert str(db) in str(err)
    assert "99" in str(err)
    assert f"only up to {len(nerve.events._schema.MIGRATIONS)}" in str(err)
    assert snapshot(data_dir) == before

    sql(db, "DELETE FROM schema_version WHERE version = 99")
    async with nerve.open_log(data_dir) as log:
        assert await stored(log) == events


async def test_an_edited_migration_is_refused_untouched(data_dir: Path) -> None:
    events = await write_events(data_dir, 10)
    db = data_dir / "logs.db"
    checksum = nerve.events._schema.MIGRATIONS[0].checksum
    sql(db, "UPDATE schema_version SET checksum = 'edited' WHERE version = 1")
    before = snapshot(data_dir)

    err = await refused_open(data_dir)

    assert_error(err, MigrationChecksumError)
    assert isinstance(err, SchemaError)
    assert str(db) in str(err)
    assert "migration 1" in str(err)
    assert snapshot(data_dir) == before

    sql(db, f"UPDATE schema_version SET checksum = '{checksum}' WHERE version = 1")
    async with nerve.open_log(data_dir) as log:
        assert await stored(log) == events


# --- payloads that do not serialize ---------------------------------------------------


def _registry() -> EventRegistry:
    reg = EventRegistry()
    reg.register("acct.opened", Opened)
    reg.register("acct.closed", Closed)
    reg.register("price", Price)
    return reg


BAD_DATA: dict[str, tuple[str, Any, str]] = {
    # id: (type, data, what the message must name)
    "set": ("t.bad", {"tags": {"a", "b"}}, "set"),
    "object": ("t.bad", {"who": object()}, "object"),
    "bytes": ("t.bad", {"raw": b"\x00\x01"}, "bytes"),
    "int-keys": ("t.bad", {1: "one"}, "str"),
    "nested-int-keys": ("t.bad", {"m": {(1, 2): "pair"}}, "str"),
    "huge-int": ("t.bad", {"n": 2**70}, "64-bit"),
    "lone-surrogate": ("t.bad", {"s": "\ud800"}, "surrogates"),
    "not-a-mapping": ("t.bad", ["a", "list"], "list"),
    "a-bare-set": ("t.bad", {"a"}, "set"),
    "unregistered-attrs": ("t.bad", Unregistered(1), "unregistered attrs class"),
    "registered-under-other-type": ("t.bad", Opened("ann", 1), "'acct.opened'"),
    "wrong-class-for-type": ("acct.closed", Opened("ann", 1), "Closed"),
    "mapping-missing-field": ("acct.opened", {"owner": "ann"}, "balance"),
    "mapping-wrong-type": ("acct.opened", {"owner": "ann", "balance": "x"}, "balance"),
    # JSON has no NaN or infinity: orjson would store null in their place.
    "nan": ("t.bad", {"m": [1.0, float("nan")]}, "data['m'][1]"),
    "infinity": ("t.bad", {"x": float("-inf")}, "data['x']"),
    "nan-in-registered-class": ("price", Price(float("nan")), "data['amount']"),
}


@pytest.mark.parametrize(
    ("type_", "data", "named"), BAD_DATA.values(), ids=BAD_DATA.keys()
)
async def test_a_payload_that_does_not_encode_is_refused_before_writing(
    data_dir: Path, type_: str, data: Any, named: str
) -> None:
    async with nerve.open_log(data_dir, registry=_registry()) as log:
        await log.append("acct-1", NewEvent("acct.opened", Opened("ann", 5)))
        before = await stored(log)
        files = snapshot(data_dir)

        with pytest.raises(NerveError) as info:
            await log.append(
                "acct-1", [NewEvent("t.ok", {"fine": True}), NewEvent(type_, data)]
            )

        err = info.value
        assert_error(err, EventEncodingError, TypeError, AppendError)
        assert repr(type_) in str(err)
        assert named in str(err)
        assert log.head == 1
        assert await log.stream_version("acct-1") == 1
        assert await stored(log) == before
        assert snapshot(data_dir).keys() == files.keys()  # no blob was stored


@pytest.mark.parametrize(
    ("type_", "data", "named"), BAD_DATA.values(), ids=BAD_DATA.keys()
)
async def test_a_single_bad_payload_of_a_type_seen_before_is_refused(
    data_dir: Path, type_: str, data: Any, named: str
) -> None:
    """One event, no expectations, of a type the log has written before: the
    common append's shorter way refuses what the general way refuses."""
    async with nerve.open_log(data_dir, registry=_registry()) as log:
        await log.append("acct-1", NewEvent("acct.opened", Opened("ann", 5)))
        await log.append("acct-1", NewEvent("t.bad", {"fine": True}))
        before = await stored(log)
        files = snapshot(data_dir)

        with pytest.raises(NerveError) as info:
            await log.append("acct-1", NewEvent(type_, data))

        assert_error(info.value, EventEncodingError, TypeError, AppendError)
        assert repr(type_) in str(info.value)
        assert named in str(info.value)
        assert await stored(log) == before
        assert snapshot(data_dir).keys() == files.keys()
        # The log goes on.
        await log.append("acct-1", NewEvent("t.bad", {"fine": 2}))
        assert log.head == 3


BAD_META: dict[str, tuple[Any, str]] = {
    "set": ({"tags": {"a"}}, "set"),
    "nan": ({"score": float("nan")}, "meta['score']"),
    "int-keys": ({1: "x"}, "str"),
    "not-a-mapping": (["a"], "mapping"),
}


@pytest.mark.parametrize("type_seen", [False, True], ids=["new-type", "type-seen"])
@pytest.mark.parametrize(("meta", "named"), BAD_META.values(), ids=BAD_META.keys())
async def test_meta_that_does_not_encode_is_refused_before_writing(
    log: nerve.Log, meta: Any, named: str, type_seen: bool
) -> None:
    await log.append("s", NewEvent("t.ok"))
    if type_seen:  # the common append's shorter way
        await log.append("s", NewEvent("t.meta", {"a": 0}, meta={"fine": 1}))
    before = await stored(log)
    head = log.head

    with pytest.raises(EventEncodingError) as info:
        await log.append("s", NewEvent("t.meta", {"a": 1}, meta=meta))

    assert_error(info.value, EventEncodingError, TypeError)
    assert "'t.meta'" in str(info.value)
    assert "meta" in str(info.value)
    assert named in str(info.value)
    assert log.head == head
    assert await stored(log) == before


async def test_a_big_payload_that_does_not_encode_stores_no_blob(
    data_dir: Path,
) -> None:
    async with nerve.open_log(data_dir, blob_threshold=100) as log:
        with pytest.raises(EventEncodingError):
            await log.append(
                "s",
                [
                    NewEvent("t.big", {"text": "y" * 1000}),
                    NewEvent("t.bad", {"x": {1}}),
                ],
            )
        assert log.head == 0
        assert await log.blobs.verify() == []
        assert list(log.blobs.iter_digests_sync()) == []


async def test_an_encoding_error_leaves_concurrent_appends_unaffected(
    log: nerve.Log,
) -> None:
    results: dict[int, nerve.AppendResult] = {}
    errors: list[BaseException] = []

    async def good(i: int) -> None:
        results[i] = await log.append(f"s{i}", NewEvent("t.ok", {"i": i}))

    async def bad() -> None:
        try:
            await log.append("s-bad", NewEvent("t.bad", {"x": {1, 2}}))
        except EventEncodingError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(good, i)
        nursery.start_soon(bad)
        for i in range(5, 10):
            nursery.start_soon(good, i)

    assert len(errors) == 1
    assert "'t.bad'" in str(errors[0])
    assert sorted(r.last_position for r in results.values()) == list(range(1, 11))
    events = await stored(log)
    assert sorted(e.data["i"] for e in events) == list(range(10))
    assert await log.stream_version("s-bad") == 0


# --- malformed append requests --------------------------------------------------------


async def _assert_refused(
    log: nerve.Log, call: Callable[[], Any], *named: str
) -> InvalidEventError:
    before = await stored(log)
    head = log.head
    with pytest.raises(NerveError) as info:
        await call()
    err = info.value
    assert_error(err, InvalidEventError, ValueError, AppendError)
    for n in named:
        assert n in str(err), (n, str(err))
    assert log.head == head
    assert await stored(log) == before
    return err


@pytest.mark.parametrize(
    "stream", ["", 123, None, b"bytes", "x" * 1001, "s\ud800", "é\udfff"]
)
async def test_an_invalid_stream_name_is_refused(log: nerve.Log, stream: Any) -> None:
    await log.append("s", NewEvent("t.ok"))
    err = await _assert_refused(
        log, lambda: log.append(stream, NewEvent("t.ok")), "stream"
    )
    assert repr(stream)[:50] in str(err)


async def test_an_empty_event_list_is_refused(log: nerve.Log) -> None:
    await log.append("s", NewEvent("t.ok"))
    await _assert_refused(log, lambda: log.append("orders-1", []), "'orders-1'")


@pytest.mark.parametrize(
    ("events", "named"),
    [
        ([{"type": "t.ok"}], "dict"),
        ([NewEvent("t.ok"), ("t.ok", {})], "tuple"),
        ("t.ok", "str"),
        ({"type": "t.ok"}, "str"),
        (None, "NoneType"),
        (42, "int"),
    ],
    ids=["dict-item", "tuple-item", "a-string", "a-dict", "none", "an-int"],
)
async def test_items_that_are_not_new_events_are_refused(
    log: nerve.Log, events: Any, named: str
) -> None:
    await log.append("s", NewEvent("t.ok"))
    await _assert_refused(
        log, lambda: log.append("orders-1", events), "'orders-1'", named
    )


@pytest.mark.parametrize("expected", [-1, True, False, "1", 1.0, "NO_STREAM"])
async def test_a_bad_expected_version_is_refused(log: nerve.Log, expected: Any) -> None:
    await log.append("s", NewEvent("t.ok"))
    await _assert_refused(
        log,
        lambda: log.append("s", NewEvent("t.ok"), expected_version=expected),
        "expected_version",
        repr(expected),
    )


@pytest.mark.parametrize("key", ["", 5, b"key", "k\ud800"])
async def test_a_bad_idempotency_key_is_refused(log: nerve.Log, key: Any) -> None:
    await log.append("s", NewEvent("t.ok"))
    await _assert_refused(
        log,
        lambda: log.append("s", NewEvent("t.ok"), idempotency_key=key),
        "idempotency_key",
        repr(key),
    )


@pytest.mark.parametrize(
    "type_", ["", " padded", "padded ", "tab\t", "x" * 201, 5, None, "t.\ud800"]
)
async def test_a_bad_event_type_name_is_refused(log: nerve.Log, type_: Any) -> None:
    await log.append("s", NewEvent("t.ok"))
    err = await _assert_refused(
        log,
        lambda: log.append("s", [NewEvent("t.ok"), NewEvent(type_)]),
        "event type",
    )
    assert repr(type_)[:40] in str(err)


async def test_a_type_name_of_200_characters_is_accepted(log: nerve.Log) -> None:
    result = await log.append("s", NewEvent("x" * 200))
    assert result.last_position == 1


# --- version conflicts and idempotency keys -------------------------------------------


async def test_a_wrong_expected_version_names_stream_and_versions(
    log: nerve.Log,
) -> None:
    await log.append("orders-1", [NewEvent("t.ok"), NewEvent("t.ok")])
    before = await stored(log)

    for expected, actual_text in [(1, "version 2"), (nerve.NO_STREAM, "version 2")]:
        with pytest.raises(WrongExpectedVersion) as info:
            await log.append("orders-1", NewEvent("t.ok"), expected_version=expected)
        err = info.value
        assert_error(err, WrongExpectedVersion, AppendError)
        assert (err.stream, err.expected, err.actual) == ("orders-1", expected, 2)
        assert "'orders-1'" in str(err)
        assert repr(expected) in str(err)
        assert actual_text in str(err)

    with pytest.raises(WrongExpectedVersion) as info:
        await log.append(
            "orders-2", NewEvent("t.ok"), expected_version=nerve.STREAM_EXISTS
        )
    assert "does not exist" in str(info.value)
    assert log.head == 2
    assert await stored(log) == before


async def test_an_idempotency_key_reused_for_another_stream_is_refused(
    log: nerve.Log,
) -> None:
    first = await log.append("a", NewEvent("t.ok"), idempotency_key="k-1")
    before = await stored(log)

    with pytest.raises(DuplicateIdempotencyKey) as info:
        await log.append("b", NewEvent("t.ok"), idempotency_key="k-1")

    err = info.value
    assert_error(err, DuplicateIdempotencyKey, AppendError)
    assert "'k-1'" in str(err)
    assert "'a'" in str(err)
    assert "'b'" in str(err)
    assert await stored(log) == before
    again = await log.append("a", NewEvent("t.ok"), idempotency_key="k-1")
    assert again == first._replace(duplicate=True)


# --- a closed log ---------------------------------------------------------------------


async def test_a_closed_log_refuses_appends_and_keeps_its_events(
    data_dir: Path,
) -> None:
    async with nerve.open_log(data_dir) as log:
        await log.append("s", NewEvent("t.ok", {"n": 1}))
        before = await stored(log)

    with pytest.raises(LogClosedError) as info:
        await log.append("s", NewEvent("t.ok", {"n": 2}))
    assert_error(info.value, LogClosedError)
    assert str(log.path) in str(info.value)
    assert "closed" in str(info.value)
    with pytest.raises(LogClosedError):
        await log.write_job(lambda conn: None)
    with pytest.raises(LogClosedError):
        await log.archive(timedelta(0))

    async with nerve.open_log(data_dir) as log:
        assert await stored(log) == before


async def test_a_log_closed_while_open_refuses_appends(log: nerve.Log) -> None:
    await log.append("s", NewEvent("t.ok"))
    await log.aclose()
    with pytest.raises(LogClosedError):
        await log.append("s", NewEvent("t.ok"))
    assert log.head == 1


# --- a full disk ----------------------------------------------------------------------


def _page_count(log: nerve.Log) -> int:
    return int(log._writer.conn.execute("PRAGMA page_count").fetchall()[0][0])


def _limit_pages(log: nerve.Log, pages: int) -> None:
    log._writer.conn.execute(f"PRAGMA max_page_count = {pages}").fetchall()


BIG = "z" * 20_000  # about five overflow pages: stays in the table (no blob)


async def test_a_full_disk_fails_the_append_and_the_log_recovers(
    log: nerve.Log,
) -> None:
    for i in range(3):
        await log.append(f"s{i}", NewEvent("t.ok", {"i": i}))
    before = await stored(log)
    _limit_pages(log, _page_count(log) + 1)

    with pytest.raises(StorageFullError) as info:
        await log.append("s0", [NewEvent("t.big", {"text": BIG}) for _ in range(3)])

    err = info.value
    assert_error(err, StorageFullError, OSError)
    assert str(log.path) in str(err)
    assert "full" in str(err)
    assert log.head == 3
    assert await stored(log) == before
    assert await log.stream_version("s0") == 1
    assert log.statistics().rejected == 1

    # Space comes back: the same log appends again, without a reopen, and
    # positions and versions carry on with no gap.
    _limit_pages(log, 1_073_741_823)
    result = await log.append("s0", NewEvent("t.big", {"text": BIG}))
    assert (result.first_position, result.version) == (4, 2)
    after = await stored(log)
    assert after[:3] == before
    assert [(e.position, e.stream, e.version, e.data) for e in after[3:]] == [
        (4, "s0", 2, {"text": BIG})
    ]
    assert await log.verify() is None


async def test_a_full_disk_fails_every_request_of_the_batch(
    log: nerve.Log,
) -> None:
    await log.append("s", NewEvent("t.ok"))
    before = await stored(log)
    stats = log.statistics()
    n = 6
    gate = threading.Event()

    def hold_the_writer(conn: apsw.Connection) -> None:
        # Runs in the writer's thread: shrink the limit, then keep the writer
        # busy until all n appends wait, so that they form one batch.
        pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}").fetchall()
        assert gate.wait(timeout=60)

    outcomes: dict[int, BaseException | nerve.AppendResult] = {}

    async def append(i: int) -> None:
        # Small and big requests alike: the transaction fails as a whole.
        data = {"i": i, "text": BIG if i % 2 else "small"}
        try:
            outcomes[i] = await log.append(f"b{i}", NewEvent("t.big", data))
        except StorageFullError as e:
            outcomes[i] = e

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.write_job, hold_the_writer)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(n):
                nursery.start_soon(append, i)
            await trio.testing.wait_all_tasks_blocked()
            assert log.statistics().pending == n
            gate.set()
    finally:
        gate.set()

    assert sorted(outcomes) == list(range(n))
    assert all(isinstance(o, StorageFullError) for o in outcomes.values()), outcomes
    after = log.statistics()
    assert after.batches == stats.batches + 1
    assert after.rejected == stats.rejected + n
    assert log.head == 1
    assert await stored(log) == before
    for i in range(n):
        assert await log.stream_version(f"b{i}") == 0

    _limit_pages(log, 1_073_741_823)
    result = await log.append("b0", NewEvent("t.big", {"i": 0, "text": BIG}))
    assert (result.first_position, result.version) == (2, 1)
    assert await log.verify() is None


# --- blobs ----------------------------------------------------------------------------


async def test_a_tampered_blob_fails_the_read_naming_its_digest(
    data_dir: Path,
) -> None:
    async with nerve.open_log(data_dir, blob_threshold=100) as log:
        await log.append("s", NewEvent("t.big", {"text": "y" * 1000}))
        await log.append("s", NewEvent("t.small", {"n": 2}))
        (digest,) = list(log.blobs.iter_digests_sync())
        path = log.blobs.path(digest)
        content = path.read_bytes()
        path.write_bytes(content.replace(b"y", b"Y", 1))

        with pytest.raises(NerveError) as info:
            await stored(log)

        err = info.value
        assert_error(err, BlobIntegrityError)
        assert digest in str(err)
        assert str(path) in str(err)
        # The event row itself and the rest of the log are intact.
        assert [e.data for e in await stored(log, after=1)] == [{"n": 2}]
        assert await log.verify() is None
        assert await log.blobs.verify() == [digest]

        # Putting the original content back repairs it.
        path.write_bytes(content)
        assert (await stored(log))[0].data == {"text": "y" * 1000}


async def test_a_missing_blob_fails_the_read_naming_its_digest(
    data_dir: Path,
) -> None:
    async with nerve.open_log(data_dir, blob_threshold=100) as log:
        await log.append("s", NewEvent("t.big", {"text": "y" * 1000}))
        (digest,) = list(log.blobs.iter_digests_sync())
        log.blobs.path(digest).unlink()

        with pytest.raises(NerveError) as info:
            await stored(log)

        assert_error(info.value, BlobNotFoundError, FileNotFoundError)
        assert digest in str(info.value)


# --- the archive ----------------------------------------------------------------------


async def _archived_log(
    data_dir: Path, now: list[float]
) -> tuple[list[RecordedEvent], nerve.ArchiveDay]:
    """Three events on an old day (archived) and two recent ones (hot)."""
    async with nerve.open_log(data_dir, clock=lambda: now[0]) as log:
        for i in range(3):
            await log.append("old", NewEvent("t.ok", {"i": i}))
        now[0] = T0 + 40 * DAY
        for i in range(3, 5):
            await log.append("new", NewEvent("t.ok", {"i": i}))
        events = await stored(log)
        (day,) = await log.archive(timedelta(days=30), now=now[0])
        assert (day.first, day.last, day.count) == (1, 3, 3)
        assert await stored(log) == events
    return events, day


async def test_a_missing_archive_file_fails_the_read_naming_it(
    data_dir: Path,
) -> None:
    now = [T0]
    events, day = await _archived_log(data_dir, now)
    path = nerve.events._archive.day_path(data_dir, day.day)
    path.unlink()

    async with nerve.open_log(data_dir, clock=lambda: now[0]) as log:
        with pytest.raises(NerveError) as info:
            await stored(log)

        err = info.value
        assert_error(err, ArchiveError)
        assert str(path) in str(err)
        assert "missing" in str(err)
        assert "1-3" in str(err)
        assert await log.verify() == 1
        # The hot events are all still there.
        assert await stored(log, after=3) == events[3:]
        result = await log.append("new", NewEvent("t.ok", {"i": 5}))
        assert (result.first_position, result.version) == (6, 3)


async def test_an_altered_archive_file_fails_the_read_naming_it(
    data_dir: Path,
) -> None:
    now = [T0]
    events, day = await _archived_log(data_dir, now)
    path = nerve.events._archive.day_path(data_dir, day.day)
    text = path.read_bytes()
    assert text.count(b'{\\"i\\":1}') == 1  # the payload, as JSON in JSON
    path.write_bytes(text.replace(b'{\\"i\\":1}', b'{\\"i\\":7}'))

    async with nerve.open_log(data_dir, clock=lambda: now[0]) as log:
        with pytest.raises(NerveError) as info:
            await stored(log)

        err = info.value
        assert_error(err, ArchiveError)
        assert str(path) in str(err)
        assert "checksum" in str(err)
        assert await log.verify() == 1
        assert await stored(log, after=3) == events[3:]


async def test_archiving_every_event_keeps_positions_and_the_chain(
    data_dir: Path,
) -> None:
    now = [T0]
    async with nerve.open_log(data_dir, clock=lambda: now[0]) as log:
        for i in range(3):
            await log.append("old", NewEvent("t.ok", {"i": i}))
        events = await stored(log)
        now[0] = T0 + 40 * DAY
        assert len(await log.archive(timedelta(days=30), now=now[0])) == 1

        # The hot table is empty now; the next append carries on after the
        # archive instead of reusing position 1.
        result = await log.append("old", NewEvent("t.ok", {"i": 3}))
        assert (result.first_position, result.version) == (4, 4)
        assert [e.position for e in await stored(log)] == [1, 2, 3, 4]
        assert (await stored(log))[:3] == events
        assert await log.verify() is None

    async with nerve.open_log(data_dir, clock=lambda: now[0]) as log:
        assert log.head == 4
        result = await log.append("old", NewEvent("t.ok", {"i": 4}))
        assert (result.first_position, result.version) == (5, 5)
        assert await log.verify() is None


# --- stored events that no longer decode ----------------------------------------------


async def test_a_stored_event_that_no_longer_fits_its_class_names_its_position(
    data_dir: Path,
) -> None:
    async with nerve.open_log(data_dir, registry=EventRegistry()) as log:
        await log.append("acct-1", NewEvent("acct.opened", {"owner": "ann"}))
        await log.append(
            "acct-2", NewEvent("acct.opened", {"owner": "bob", "balance": 3})
        )
        before = await stored(log)

    async with nerve.open_log(data_dir, registry=_registry()) as log:
        with pytest.raises(NerveError) as info:
            await stored(log)

        err = info.value
        assert_error(err, EventDecodingError, ValueError)
        assert "position 1" in str(err)
        assert "'acct.opened'" in str(err)
        assert "Opened" in str(err)
        assert "balance" in str(err)
        assert [e.data for e in await stored(log, after=1)] == [Opened("bob", 3)]

    # Nothing was changed: the old registry still reads everything.
    async with nerve.open_log(data_dir, registry=EventRegistry()) as log:
        assert await stored(log) == before


async def test_a_stored_event_of_a_newer_schema_version_names_its_position(
    data_dir: Path,
) -> None:
    newer = EventRegistry()
    newer.register("acct.opened", Opened, version=2, upcasters={1: lambda d: d})
    async with nerve.open_log(data_dir, registry=newer) as log:
        await log.append("acct-1", NewEvent("acct.opened", Opened("ann", 1)))

    async with nerve.open_log(data_dir, registry=_registry()) as log:
        with pytest.raises(EventDecodingError) as info:
            await stored(log)
        assert "position 1" in str(info.value)
        assert "v2" in str(info.value)
        assert "v1" in str(info.value)


async def test_a_failing_upcaster_names_the_position(data_dir: Path) -> None:
    async with nerve.open_log(data_dir, registry=EventRegistry()) as log:
        await log.append("acct-1", NewEvent("acct.opened", {"owner": "ann"}))

    def boom(d: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("currency")

    reg = EventRegistry()
    reg.register("acct.opened", Opened, version=2, upcasters={1: boom})
    async with nerve.open_log(data_dir, registry=reg) as log:
        with pytest.raises(EventDecodingError) as info:
            await stored(log)
        assert "position 1" in str(info.value)
        assert "upcaster" in str(info.value)
        assert "currency" in str(info.value)


@pytest.mark.parametrize("column", ["payload", "meta"])
async def test_a_stored_row_that_is_not_json_names_its_position(
    log: nerve.Log, column: str
) -> None:
    await log.append("s", NewEvent("t.ok", {"n": 1}, meta={"m": 1}))
    await log.append("s", NewEvent("t.ok", {"n": 2}))

    def tamper(conn: apsw.Connection) -> None:
        conn.execute(f"UPDATE logs SET {column} = '{{oops' WHERE position = 1")

    await log.write_job(tamper)

    with pytest.raises(NerveError) as info:
        await stored(log)

    assert_error(info.value, EventDecodingError, ValueError)
    assert "position 1" in str(info.value)
    assert "'t.ok'" in str(info.value)
    assert [e.data for e in await stored(log, after=1)] == [{"n": 2}]
    assert await log.verify() == 1


# --- registry misuse ------------------------------------------------------------------


def test_registering_a_class_that_is_not_attrs_is_refused() -> None:
    reg = EventRegistry()
    with pytest.raises(InvalidEventError) as info:
        reg.register("t.plain", Plain)
    assert_error(info.value, InvalidEventError, ValueError)
    assert "Plain" in str(info.value)
    assert "'t.plain'" in str(info.value)
    assert "attrs" in str(info.value)
    assert "t.plain" not in reg


def test_registering_a_type_twice_to_different_classes_is_refused() -> None:
    reg = _registry()
    with pytest.raises(InvalidEventError) as info:
        reg.register("acct.opened", Closed)
    assert_error(info.value, InvalidEventError, ValueError)
    assert "'acct.opened'" in str(info.value)
    assert "Opened" in str(info.value)
    assert reg.lookup("acct.opened").cls is Opened  # type: ignore[union-attr]
    # Registering the same pair again is harmless.
    assert reg.register("acct.opened", Opened) is Opened


def test_registering_a_class_under_two_types_is_refused() -> None:
    reg = _registry()
    with pytest.raises(InvalidEventError) as info:
        reg.register("acct.opened.again", Opened)
    assert "Opened" in str(info.value)
    assert "'acct.opened'" in str(info.value)
    assert "acct.opened.again" not in reg


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"version": 2}, "[1]"),
        ({"version": 3, "upcasters": {1: lambda d: d}}, "[2]"),
        ({"version": 0}, "version"),
        ({"version": "2"}, "version"),
    ],
    ids=["v2-no-upcaster", "v3-missing-v2", "v0", "str-version"],
)
def test_registering_a_bad_version_is_refused(kwargs: Any, named: str) -> None:
    reg = EventRegistry()
    with pytest.raises(InvalidEventError) as info:
        reg.register("acct.opened", Opened, **kwargs)
    assert_error(info.value, InvalidEventError, ValueError)
    assert "'acct.opened'" in str(info.value)
    assert named in str(info.value)
    assert "acct.opened" not in reg


@pytest.mark.parametrize("type_", ["", " x", "x" * 201, 5])
def test_registering_under_a_bad_type_name_is_refused(type_: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        EventRegistry().register(type_, Opened)
    assert "event type" in str(info.value)


def test_the_type_of_an_unregistered_class_is_unknown() -> None:
    reg = _registry()
    for thing in (Unregistered, Unregistered(1), Plain):
        with pytest.raises(UnknownEventTypeError) as info:
            reg.type_of(thing)
        assert_error(info.value, UnknownEventTypeError, LookupError)
        name = thing.__qualname__ if isinstance(thing, type) else "Unregistered"
        assert name in str(info.value)
    assert reg.type_of(Opened("ann", 1)) == "acct.opened"


# --- reading --------------------------------------------------------------------------


@pytest.mark.parametrize("after", [-1, "1", None, 1.5, True])
async def test_reading_after_a_bad_position_is_refused(
    log: nerve.Log, after: Any
) -> None:
    await log.append("s", NewEvent("t.ok"))
    with pytest.raises(ValueError, match="after") as info:
        log.read(after)
    assert repr(after) in str(info.value)
    with pytest.raises(ValueError, match="after"):
        log.subscribe(after)


async def test_a_source_that_cannot_be_stored_is_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidEventError, match="source") as info:
        async with nerve.open_log(data_dir, source="kernel\ud800"):
            pass
    assert "surrogate" in str(info.value)
    assert not (data_dir / "logs.db").exists()
