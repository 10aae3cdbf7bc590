"""Tests of the content-addressed blob store (`nerve.events._blobs`)."""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import stat
import tempfile
from collections.abc import Callable, Iterable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from nerve.events._blobs import BlobStore
from nerve.events._errors import (
    BlobError,
    BlobIntegrityError,
    BlobNotFoundError,
    InvalidBlobDigest,
    StorageFullError,
    StorageIOError,
)

GOOD = "0" * 64

BAD_DIGESTS = [
    "",
    "../../etc/passwd",
    "../" * 21 + "a",  # 64 characters, but a path traversal
    "/" + "a" * 63,  # absolute path of the right length
    "aa/" + "b" * 61,  # separator inside an otherwise hex string
    "A" * 64,  # uppercase: a second name for the same blob
    "a" * 63,  # too short
    "a" * 65,  # too long
    "a" * 64 + "\n",  # trailing newline (what a `$` regex would let through)
    "g" * 64,  # not hex
    " " + "a" * 63,
    "a" * 1000,  # long: the message must stay short
    b"a" * 64,  # bytes, not str
    None,
    64,
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_files(top: pathlib.Path) -> list[pathlib.Path]:
    """Every file (not directory) under ``top``, sorted."""
    return sorted(p for p in top.rglob("*") if not p.is_dir())


def snapshot(top: pathlib.Path) -> list[pathlib.Path]:
    """Every path (files and directories) under ``top``, sorted."""
    return sorted(top.rglob("*"))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> BlobStore:
    return BlobStore(tmp_path / "data" / "blobs")


# --- round trip, digest, layout ---------------------------------------------------


def test_put_get_round_trip(store: BlobStore) -> None:
    digest = store.put_sync(b"hello, world")
    assert store.get_sync(digest) == b"hello, world"
    assert store.exists_sync(digest)


def test_empty_blob_round_trips(store: BlobStore) -> None:
    digest = store.put_sync(b"")
    assert digest == sha(b"")
    assert store.get_sync(digest) == b""


def test_digest_is_sha256_hex(store: BlobStore) -> None:
    data = bytes(range(256)) * 10
    digest = store.put_sync(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert len(digest) == 64
    assert digest == digest.lower()


def test_accepts_bytearray_and_memoryview(store: BlobStore) -> None:
    digest = store.put_sync(bytearray(b"mutable"))  # type: ignore[arg-type]
    assert digest == sha(b"mutable")
    assert store.put_sync(memoryview(b"view")) == sha(b"view")  # type: ignore[arg-type]
    assert store.get_sync(digest) == b"mutable"


def test_layout(store: BlobStore) -> None:
    digest = store.put_sync(b"layout")
    expected = store.root / digest[:2] / digest[2:]
    assert store.path(digest) == expected
    assert expected.is_file()
    assert expected.read_bytes() == b"layout"
    # Nothing else in the store: no temp files left after a successful put.
    assert all_files(store.root) == [expected]


def test_root_is_created_lazily(store: BlobStore) -> None:
    assert not store.root.exists()
    assert not store.exists_sync(GOOD)
    assert list(store.iter_digests_sync()) == []
    assert store.verify_sync() == []
    assert not store.root.exists()  # reads create nothing
    store.put_sync(b"x")
    assert store.root.is_dir()


def test_root_accepts_str(tmp_path: pathlib.Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"))
    assert isinstance(store.root, pathlib.Path)
    assert store.get_sync(store.put_sync(b"s")) == b"s"


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_permissions(store: BlobStore, umask: int) -> None:
    # The modes are set explicitly, so neither a loose nor a strict umask changes
    # them. (os.umask is process-wide, hence restored in `finally`.)
    old = os.umask(umask)
    try:
        digest = store.put_sync(b"secret")
    finally:
        os.umask(old)
    path = store.path(digest)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


# --- dedup and repair -------------------------------------------------------------


def test_dedup(store: BlobStore) -> None:
    first = store.put_sync(b"same content")
    path = store.path(first)
    os.utime(path, (1, 1))
    inode = path.stat().st_ino
    second = store.put_sync(b"same content")
    assert first == second
    assert all_files(store.root) == [path]
    # Not rewritten (a rewrite renames a new file in): the existing file was
    # trusted (its size matched); only its time was renewed (see prune).
    assert path.stat().st_ino == inode
    assert path.stat().st_mtime > 1


def test_distinct_contents_distinct_files(store: BlobStore) -> None:
    digests = {store.put_sync(bytes([i])) for i in range(20)}
    assert len(digests) == 20
    assert sorted(store.iter_digests_sync()) == sorted(digests)
    assert len(all_files(store.root)) == 20


def test_truncated_file_is_repaired_by_put(store: BlobStore) -> None:
    data = b"0123456789" * 100
    digest = store.put_sync(data)
    path = store.path(digest)
    path.write_bytes(data[:300])  # as if a crash had truncated it
    with pytest.raises(BlobIntegrityError):
        store.get_sync(digest)
    assert store.put_sync(data) == digest
    assert path.read_bytes() == data
    assert store.get_sync(digest) == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert all_files(store.root) == [path]


def test_oversized_file_is_repaired_by_put(store: BlobStore) -> None:
    digest = store.put_sync(b"abc")
    store.path(digest).write_bytes(b"abc plus garbage")
    store.put_sync(b"abc")
    assert store.get_sync(digest) == b"abc"


def test_symlink_in_place_of_blob_is_replaced(
    store: BlobStore, tmp_path: pathlib.Path
) -> None:
    data = b"linked"
    digest = store.put_sync(data)
    path = store.path(digest)
    outside = tmp_path / "outside"
    outside.write_bytes(data)  # right size, but not a file in the store
    path.unlink()
    path.symlink_to(outside)
    store.put_sync(data)
    assert not path.is_symlink()
    assert path.read_bytes() == data
    assert outside.read_bytes() == data  # the link target was not written through


# --- integrity --------------------------------------------------------------------


def test_tamper_detection(store: BlobStore) -> None:
    good = store.put_sync(b"untouched")
    digest = store.put_sync(b"original content")
    path = store.path(digest)
    path.write_bytes(b"tampered content")  # same length: put would not notice
    with pytest.raises(BlobIntegrityError) as exc_info:
        store.get_sync(digest)
    message = str(exc_info.value)
    assert digest in message
    assert str(path) in message
    assert isinstance(exc_info.value, BlobError)
    assert store.verify_sync() == [digest]
    assert store.get_sync(good) == b"untouched"


def test_verify_clean_store(store: BlobStore) -> None:
    for i in range(5):
        store.put_sync(b"blob %d" % i)
    assert store.verify_sync() == []


def test_verify_and_iter_ignore_stray_files(store: BlobStore) -> None:
    digest = store.put_sync(b"real")
    shard = store.path(digest).parent
    (shard / ".tmp-leftover").write_bytes(b"half a write")
    (shard / "README").write_bytes(b"not a blob")
    (shard / ("A" * 62)).write_bytes(b"uppercase is not a digest")
    (store.root / "zz").mkdir()  # not a hex shard
    (store.root / "zz" / ("0" * 62)).write_bytes(b"x")
    (store.root / "stray-file").write_bytes(b"x")
    assert list(store.iter_digests_sync()) == [digest]
    assert store.verify_sync() == []


def test_iter_digests_sorted(store: BlobStore) -> None:
    digests = [store.put_sync(b"%d" % i) for i in range(30)]
    assert list(store.iter_digests_sync()) == sorted(digests)


# --- bad and missing digests ------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_DIGESTS, ids=repr)
def test_invalid_digest_refused(
    store: BlobStore, tmp_path: pathlib.Path, bad: object
) -> None:
    store.put_sync(b"something")  # a populated store, to check nothing changes
    before = snapshot(tmp_path)
    calls: list[Callable[[], object]] = [
        lambda: store.get_sync(bad),  # type: ignore[arg-type]
        lambda: store.exists_sync(bad),  # type: ignore[arg-type]
        lambda: store.path(bad),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidBlobDigest) as exc_info:
            call()
        message = str(exc_info.value)
        assert repr(bad)[:40] in message  # the bad value is shown...
        assert len(message) < 200  # ...but truncated
        assert isinstance(exc_info.value, ValueError)
    assert snapshot(tmp_path) == before


def test_invalid_digest_on_empty_store_creates_nothing(
    store: BlobStore, tmp_path: pathlib.Path
) -> None:
    before = snapshot(tmp_path)
    for bad in BAD_DIGESTS:
        with pytest.raises(InvalidBlobDigest):
            store.get_sync(bad)  # type: ignore[arg-type]
    assert snapshot(tmp_path) == before
    assert not store.root.exists()


def test_missing_blob(store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError) as exc_info:
        store.get_sync(GOOD)  # store root does not even exist yet
    assert GOOD in str(exc_info.value)
    store.put_sync(b"other")
    missing = sha(b"never stored")
    with pytest.raises(BlobNotFoundError) as exc_info:
        store.get_sync(missing)
    assert missing in str(exc_info.value)
    # Code that already handles FileNotFoundError keeps working.
    assert isinstance(exc_info.value, FileNotFoundError)
    assert not store.exists_sync(missing)


# --- failed writes ----------------------------------------------------------------


def _fail_on_regular_files(monkeypatch: pytest.MonkeyPatch, code: int) -> list[int]:
    """Make ``os.fsync`` fail with ``code`` for files (directories still work)."""
    real_fsync = os.fsync
    failed: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            failed.append(fd)
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def test_disk_full_on_fsync(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _fail_on_regular_files(monkeypatch, errno.ENOSPC)
    data = b"does not fit"
    with pytest.raises(StorageFullError) as exc_info:
        store.put_sync(data)
    assert failed  # the failure really happened where intended
    err = exc_info.value
    assert isinstance(err.__cause__, OSError)
    assert err.__cause__.errno == errno.ENOSPC
    assert err.errno == errno.ENOSPC
    assert isinstance(err, OSError)
    assert sha(data) in str(err)
    # No temp file and no final file.
    assert all_files(store.root) == []
    assert not store.exists_sync(sha(data))
    # Once space is back, the same put works.
    monkeypatch.undo()
    assert store.get_sync(store.put_sync(data)) == data


def test_quota_exceeded_is_storage_full(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_on_regular_files(monkeypatch, errno.EDQUOT)
    with pytest.raises(StorageFullError):
        store.put_sync(b"over quota")
    assert all_files(store.root) == []


def test_io_error_on_fsync(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_regular_files(monkeypatch, errno.EIO)
    with pytest.raises(StorageIOError) as exc_info:
        store.put_sync(b"bad disk")
    assert not isinstance(exc_info.value, StorageFullError)
    assert exc_info.value.__cause__ is not None
    assert all_files(store.root) == []


def test_disk_full_on_replace(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def replace(src: str, dst: object) -> None:
        seen.append(os.path.basename(src))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageFullError):
        store.put_sync(b"nowhere to go")
    # A temp file named .tmp-* was written and then cleaned up.
    assert len(seen) == 1
    assert seen[0].startswith(".tmp-")
    assert all_files(store.root) == []


def test_failed_repair_keeps_nothing_new(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"to be repaired"
    digest = store.put_sync(data)
    path = store.path(digest)
    path.write_bytes(b"short")
    _fail_on_regular_files(monkeypatch, errno.ENOSPC)
    with pytest.raises(StorageFullError):
        store.put_sync(data)
    assert all_files(store.root) == [path]  # no temp file left next to it
    monkeypatch.undo()
    store.put_sync(data)
    assert store.get_sync(digest) == data


# --- property ---------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=4096))
def test_round_trip_property(data: bytes) -> None:
    # tmp_path is function-scoped (shared by all examples), so each example gets
    # its own fresh directory.
    with tempfile.TemporaryDirectory() as tmp:
        store = BlobStore(pathlib.Path(tmp) / "blobs")
        digest = store.put_sync(data)
        assert digest == sha(data)
        assert store.get_sync(digest) == data
        assert store.put_sync(data) == digest
        assert list(store.iter_digests_sync()) == [digest]
        assert store.verify_sync() == []


# --- async API --------------------------------------------------------------------


async def test_async_api(store: BlobStore) -> None:
    digest = await store.put(b"from trio")
    assert digest == sha(b"from trio")
    assert await store.exists(digest)
    assert await store.get(digest) == b"from trio"
    assert await store.verify() == []
    assert not await store.exists(sha(b"absent"))
    with pytest.raises(BlobNotFoundError):
        await store.get(sha(b"absent"))
    with pytest.raises(InvalidBlobDigest):
        await store.get("../../etc/passwd")
    store.path(digest).write_bytes(b"from TRIO")
    with pytest.raises(BlobIntegrityError):
        await store.get(digest)
    assert await store.verify() == [digest]


async def test_concurrent_puts_of_same_content(store: BlobStore) -> None:
    data = b"popular" * 1000
    results: list[str] = []

    async def put_one() -> None:
        results.append(await store.put(data))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(put_one)
    assert results == [sha(data)] * 20
    assert all_files(store.root) == [store.path(sha(data))]
    assert await store.get(sha(data)) == data


async def test_concurrent_puts_of_different_content(store: BlobStore) -> None:
    blobs = [b"blob number %d" % i for i in range(40)]

    async with trio.open_nursery() as nursery:
        for blob in blobs:
            nursery.start_soon(store.put, blob)
    assert sorted(store.iter_digests_sync()) == sorted(sha(b) for b in blobs)
    assert await store.verify() == []


# --- pruning ----------------------------------------------------------------------


def _make_old(store: BlobStore, digest: str) -> None:
    os.utime(store.path(digest), (1, 1))


def test_prune_deletes_old_unreferenced_blobs_only(store: BlobStore) -> None:
    keep, drop, young = (store.put_sync(b) for b in (b"keep", b"drop", b"young"))
    _make_old(store, keep)
    _make_old(store, drop)
    asked: list[set[str]] = []

    def referenced(candidates: Iterable[str]) -> set[str]:
        asked.append(set(candidates))
        return {keep}

    assert store.prune_sync(referenced, older_than=3600) == [drop]
    assert asked == [{keep, drop}]  # the young one is not even a candidate
    assert sorted(store.iter_digests_sync()) == sorted([keep, young])
    assert all_files(store.root) == sorted([store.path(keep), store.path(young)])


def test_prune_keeps_a_blob_put_again_while_it_decides(store: BlobStore) -> None:
    """A put of the same content racing the prune renews the blob's time: the
    prune, which moves each candidate aside before a last look, puts it back."""
    digest = store.put_sync(b"content")
    _make_old(store, digest)

    def referenced(candidates: Iterable[str]) -> set[str]:
        assert store.put_sync(b"content") == digest  # meanwhile, a put
        return set()

    assert store.prune_sync(referenced, older_than=3600) == []
    assert store.get_sync(digest) == b"content"
    assert all_files(store.root) == [store.path(digest)]


def test_prune_of_an_empty_or_missing_store(store: BlobStore) -> None:
    assert store.prune_sync(lambda c: set(), older_than=0) == []
    store.put_sync(b"x")
    assert len(store.prune_sync(lambda c: set(), older_than=0)) == 1
    assert list(store.iter_digests_sync()) == []
