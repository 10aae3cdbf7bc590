"""A content-addressed blob store: large payloads kept outside the event log.

Events should stay small, so bulky payloads (files, images, model outputs) are
stored here and the event carries only the blob's digest. A blob's name *is* the
sha256 of its content, which gives three properties for free:

* deduplication: storing the same bytes twice stores them once;
* immutability: a name can never refer to different content, so a blob, once
  written, is never rewritten (except to repair a damaged copy);
* integrity: every read can be checked against the name.

Layout (under ``root``, normally ``data/blobs``)::

    root/
      ab/                   first 2 hex characters of the digest (mode 0o700)
        cdef...(62 hex)     the content itself (mode 0o600)
        .tmp-xxxxxxxx       an in-flight write; never a valid digest name

The blocking ``*_sync`` methods do the file system work and are meant for a
worker thread; the async methods are thin `trio.to_thread.run_sync` wrappers
around them, so trio code never blocks its event loop on disk I/O.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

import attrs
import trio

from nerve.events._errors import (
    BlobIntegrityError,
    BlobNotFoundError,
    InvalidBlobDigest,
    StorageFullError,
    StorageIOError,
)

__all__ = ["BlobStore"]

# `fullmatch` (not `match` with `$`, which also accepts a trailing newline) so that
# nothing but exactly 64 lowercase hex characters is ever turned into a path.
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_REST_RE = re.compile(r"[0-9a-f]{62}")

# errnos meaning "out of space" rather than "the device misbehaved": the caller can
# act on them (free space, raise a quota), so they get their own error class.
# EDQUOT is missing on some platforms, hence the getattr.
_FULL_ERRNOS: frozenset[int] = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)

_FILE_MODE = 0o600
_DIR_MODE = 0o700

# Read in chunks when only hashing, so verifying a store of large blobs does not
# need memory proportional to the largest blob.
_CHUNK = 1 << 20

_REPR_LIMIT = 80


def _check_digest(digest: object) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters, else raise.

    This is the only gate between a caller-supplied string and a file system path,
    so it is strict: no uppercase (two names for one blob), no separators, no
    "..", no other lengths.

    Raises:
        InvalidBlobDigest: ``digest`` is not a well-formed digest.
    """
    if isinstance(digest, str) and _DIGEST_RE.fullmatch(digest):
        return digest
    shown = repr(digest)
    if len(shown) > _REPR_LIMIT:
        shown = shown[: _REPR_LIMIT - 3] + "..."
    raise InvalidBlobDigest(
        f"invalid blob digest {shown}: expected 64 lowercase hex characters "
        "(a sha256 hex digest)"
    )


def _fsync_dir(path: pathlib.Path) -> None:
    """Flush a directory's entries to disk.

    A new or renamed file is only durable once the directory that names it has
    been fsynced too; fsyncing the file alone persists its content, not its name.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: pathlib.Path) -> bool:
    """Create ``path`` with mode 0o700; return whether this call created it.

    Tolerates a concurrent creator (another thread putting a blob in the same
    shard), which is why it does not check for existence first.
    """
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return False
    # The mode given to mkdir is filtered through the umask; a restrictive umask
    # would leave us a directory we cannot write into, so set it explicitly.
    os.chmod(path, _DIR_MODE)
    return True


def _storage_error(exc: OSError, what: str) -> StorageFullError | StorageIOError:
    """Translate an OSError from a write into nerve's storage error classes."""
    message = f"{what}: {exc.strerror or exc}"
    if exc.errno in _FULL_ERRNOS:
        return StorageFullError(exc.errno, message)
    return StorageIOError(exc.errno, message)


@attrs.define
class BlobStore:
    """A directory of immutable blobs, each named by the sha256 of its content.

    Writes are atomic and durable: a blob is written to a temporary file in its
    final directory, fsynced, renamed into place and its directory fsynced, so a
    crash leaves either the whole blob or no blob, never a partial one under a
    valid name. Reads verify the content against its name.

    Thread safety: any number of threads may put and get concurrently; concurrent
    puts of the same content each write a private temporary file and the atomic
    rename makes the last one win with identical bytes.

    Attributes:
        root: the store's directory (normally ``data/blobs``). It is created, with
            mode 0o700, by the first put; reading from a store that was never
            written to simply finds nothing.
    """

    root: pathlib.Path = attrs.field(converter=pathlib.Path)

    # --- blocking API (call from a worker thread) -------------------------------

    def path(self, digest: str) -> pathlib.Path:
        """Return the file path where the blob ``digest`` is (or would be) stored.

        Args:
            digest: a sha256 hex digest (64 lowercase hex characters).

        Returns:
            ``root / digest[:2] / digest[2:]``; the file may not exist.

        Raises:
            InvalidBlobDigest: ``digest`` is not a well-formed digest.
        """
        digest = _check_digest(digest)
        return self.root / digest[:2] / digest[2:]

    def put_sync(self, data: bytes) -> str:
        """Store ``data`` and return its digest, blocking until it is durable.

        If a blob with this digest is already stored with the right size nothing
        is written. A stored file of the wrong size (for example truncated by a
        crash on a file system without ordered writes, or by hand) is replaced.

        Args:
            data: the blob's content.

        Returns:
            The sha256 hex digest of ``data`` (64 lowercase hex characters).

        Raises:
            StorageFullError: the disk or the quota is full; nothing was stored.
            StorageIOError: any other OS error while writing; nothing was stored
                under the digest's name (no temporary file is left behind either).
        """
        if not isinstance(data, bytes):
            # A bytearray or memoryview could change between hashing and writing;
            # snapshot it. (memoryview, unlike bytes(), refuses an int.)
            data = memoryview(data).tobytes()
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if self._stored_with_size(final, len(data)):
            # Dedup on size only: hashing the existing file on every put would make
            # writes cost a full read. Same-size corruption is caught by get (on
            # every read) and by verify; a size mismatch is cheap to detect here.
            # Its time is renewed: `prune_sync` keeps recently put blobs, which
            # an event about to be appended may name.
            with contextlib.suppress(OSError):
                os.utime(final)
            return digest
        try:
            self._write_atomically(data, final)
        except OSError as e:
            raise _storage_error(e, f"cannot store blob {digest} at {final}") from e
        return digest

    def get_sync(self, digest: str) -> bytes:
        """Return the content of blob ``digest``, checked against the digest.

        Args:
            digest: a sha256 hex digest (64 lowercase hex characters).

        Returns:
            The blob's bytes.

        Raises:
            InvalidBlobDigest: ``digest`` is not a well-formed digest.
            BlobNotFoundError: no blob is stored under ``digest``.
            BlobIntegrityError: the stored content does not hash to ``digest``.
        """
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise BlobNotFoundError(
                errno.ENOENT, f"no blob is stored under digest {digest} (at {path})"
            ) from e
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            # Never hand out bytes that are not what the name promises: callers
            # treat the digest as proof of content.
            raise BlobIntegrityError(
                f"blob {digest} at {path} is corrupt: its content ({len(data)} "
                f"bytes) hashes to {actual}; restore it from a backup or put the "
                "original content again"
            )
        return data

    def exists_sync(self, digest: str) -> bool:
        """Return whether a blob is stored under ``digest`` (content not checked).

        Args:
            digest: a sha256 hex digest (64 lowercase hex characters).

        Raises:
            InvalidBlobDigest: ``digest`` is not a well-formed digest.
        """
        return self.path(digest).is_file()

    def iter_digests_sync(self) -> Iterator[str]:
        """Yield the digest of every stored blob, in sorted order.

        Only files whose location forms a valid digest are reported: temporary
        files of in-flight (or crashed) writes and any other stray entries are
        skipped.
        """
        for shard in self._sorted_entries(self.root):
            if not (_SHARD_RE.fullmatch(shard.name) and shard.is_dir()):
                continue
            for entry in self._sorted_entries(pathlib.Path(shard.path)):
                if _REST_RE.fullmatch(entry.name) and entry.is_file(
                    follow_symlinks=False
                ):
                    yield shard.name + entry.name

    def prune_sync(
        self, referenced: Callable[[Iterable[str]], Iterable[str]], older_than: float
    ) -> list[str]:
        """Delete the blobs nothing references, if not put for ``older_than`` s.

        Args:
            referenced: given the candidate digests, returns those still in use
                (called once, after the candidates are chosen).
            older_than: seconds since a blob was last put (its file's mtime);
                younger blobs are kept, whatever ``referenced`` says: an event
                naming them may be on its way.

        Returns:
            The digests deleted.

        A candidate is first renamed aside, then its time checked again: a put
        of the same content racing the prune either touched it before the
        rename (it is restored) or finds it gone and writes it anew.
        """
        cutoff = time.time() - older_than
        old = []
        for digest in self.iter_digests_sync():
            with contextlib.suppress(FileNotFoundError):
                if self.path(digest).stat().st_mtime < cutoff:
                    old.append(digest)
        if not old:
            return []
        keep = set(referenced(old))
        removed = []
        for digest in old:
            if digest in keep:
                continue
            path = self.path(digest)
            aside = path.with_name(f".prune-{path.name}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if aside.stat().st_mtime >= cutoff and not path.exists():
                os.rename(aside, path)  # put again meanwhile: keep it
                continue
            aside.unlink()
            removed.append(digest)
        if removed:
            for shard in {self.path(d).parent for d in removed}:
                _fsync_dir(shard)
        return removed

    def verify_sync(self) -> list[str]:
        """Re-hash every stored blob and return the digests that no longer match.

        Returns:
            The sorted digests of blobs whose content does not hash to their name;
            an empty list when the store is intact. Stray files (such as
            leftover ``.tmp-*`` files) are ignored.
        """
        damaged: list[str] = []
        for digest in self.iter_digests_sync():
            h = hashlib.sha256()
            try:
                with self.path(digest).open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
            except FileNotFoundError:
                # Listed a moment ago and gone now: nothing left to be damaged.
                continue
            if h.hexdigest() != digest:
                damaged.append(digest)
        return damaged

    # --- async API (for trio code) ---------------------------------------------

    async def put(self, data: bytes) -> str:
        """Store ``data`` from a worker thread; see `put_sync`."""
        return await trio.to_thread.run_sync(self.put_sync, data)

    async def get(self, digest: str) -> bytes:
        """Read blob ``digest`` from a worker thread; see `get_sync`."""
        return await trio.to_thread.run_sync(self.get_sync, digest)

    async def exists(self, digest: str) -> bool:
        """Check for blob ``digest`` from a worker thread; see `exists_sync`."""
        return await trio.to_thread.run_sync(self.exists_sync, digest)

    async def verify(self) -> list[str]:
        """Verify every blob from a worker thread; see `verify_sync`."""
        return await trio.to_thread.run_sync(self.verify_sync)

    # --- internals ----------------------------------------------------------------

    @staticmethod
    def _stored_with_size(path: pathlib.Path, size: int) -> bool:
        """Return whether ``path`` is a regular file of exactly ``size`` bytes."""
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        # lstat, not stat: a symlink planted in the store is not a stored blob, and
        # os.replace will swap the link itself for a real file.
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    @staticmethod
    def _sorted_entries(path: pathlib.Path) -> list[os.DirEntry[str]]:
        """List a directory sorted by name; an absent directory is empty."""
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return []

    def _ensure_dirs(self, shard: pathlib.Path) -> None:
        """Create ``root`` and ``shard`` as needed, making their names durable."""
        if shard.is_dir():
            return
        root_created = False
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            root_created = _mkdir_private(self.root)
        shard_created = _mkdir_private(shard)
        # A new directory's name lives in its parent: without these fsyncs a crash
        # could lose the whole shard (and every blob in it) after put returned.
        if root_created:
            _fsync_dir(self.root.parent)
        if shard_created:
            _fsync_dir(self.root)

    def _write_atomically(self, data: bytes, final: pathlib.Path) -> None:
        """Write ``data`` to ``final`` via a temporary file and an atomic rename.

        On any failure the temporary file is removed, so a failed put leaves
        nothing behind; ``final`` is only ever created complete, by the rename.
        """
        shard = final.parent
        self._ensure_dirs(shard)
        # Same directory as the final name, so the rename stays on one file system
        # and is atomic. mkstemp opens with O_EXCL and a random name, so concurrent
        # writers never share a temporary file.
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=shard)
        tmp: str | None = tmp_name
        try:
            with os.fdopen(fd, "wb") as f:
                # mkstemp already uses 0o600, but a umask could narrow it further.
                os.fchmod(f.fileno(), _FILE_MODE)
                f.write(data)
                f.flush()
                # Content must be on disk *before* the rename makes it visible under
                # its digest, or a crash could leave a valid name with bad bytes.
                os.fsync(f.fileno())
            os.replace(tmp_name, final)
            tmp = None  # renamed: nothing left to clean up
            # Persist the rename itself. If this fails the blob is complete and
            # correct (its content was fsynced) but may not survive a crash, so
            # the error is still reported; the file is not removed because a
            # concurrent put of the same content may already rely on it.
            _fsync_dir(shard)
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
