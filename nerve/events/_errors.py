"""The exceptions of nerve: one root, `NerveError`, and a subclass per fault.

Where a builtin carries the same meaning the error derives from it too, so that
code which already catches `ValueError` or `OSError` keeps working.
"""

from __future__ import annotations

from typing import Any


class NerveError(Exception):
    """The root of every error nerve raises on purpose."""


# --- appending -------------------------------------------------------------


class AppendError(NerveError):
    """An append was refused; nothing of it was written."""


class WrongExpectedVersion(AppendError):
    """The stream's version is not the one the append expected.

    Attributes:
        stream: the stream appended to.
        expected: the expected version given (an int, or ``NO_STREAM``).
        actual: the stream's current version (0 when it does not exist).
    """

    def __init__(self, stream: str, expected: Any, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        if actual == 0:
            what = "the stream does not exist"
        else:
            what = f"the stream is at version {actual}"
        super().__init__(
            f"append to stream {stream!r} expected version {expected!r}, but {what}; "
            "nothing was written (re-read the stream and retry)"
        )


class DuplicateIdempotencyKey(AppendError):
    """An idempotency key was reused for a *different* stream.

    Repeating an append with the same key and stream is not an error: it writes
    nothing and returns the original `AppendResult`. Reusing the key for another
    stream is a bug in the caller, so it raises.
    """

    def __init__(self, key: str, original_stream: str, stream: str) -> None:
        self.key = key
        self.original_stream = original_stream
        self.stream = stream
        super().__init__(
            f"idempotency key {key!r} was first used for stream {original_stream!r} "
            f"and cannot be reused for stream {stream!r}; nothing was written"
        )


class EventEncodingError(AppendError, TypeError):
    """An event's data or meta cannot be encoded as JSON; nothing was written."""


class InvalidEventError(AppendError, ValueError):
    """An event or an append request is malformed (empty type, bad stream name...)."""


class UnknownEventTypeError(NerveError, LookupError):
    """A registered event class or type name is not known to the registry."""


class EventDecodingError(NerveError, ValueError):
    """A stored event cannot be decoded into its registered class."""


class RefusedByProjection(AppendError):
    """An inline projection refused the events (for example an illegal transition)."""


# --- the database ------------------------------------------------------------


class LogClosedError(NerveError):
    """The log was closed; open it again to append or read."""


class AppendWithdrawnError(NerveError):
    """A submitted append was withdrawn before it was written: the task that
    waited for it was cancelled. Nothing of it was written."""


class DatabaseError(NerveError):
    """A database file cannot be used; it was left exactly as it was found."""

    def __init__(self, path: object, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class NotADatabaseError(DatabaseError):
    """The file exists but is not a SQLite database (or not a nerve one)."""


class CorruptDatabaseError(DatabaseError):
    """SQLite reports the database as corrupt."""


class SchemaError(DatabaseError):
    """The database's schema cannot be used by this version of nerve."""


class NewerSchemaError(SchemaError):
    """The database was written by a newer nerve (a schema version we do not know)."""


class MigrationChecksumError(SchemaError):
    """An applied migration differs from the code's: the migration was edited."""


class StorageFullError(NerveError, OSError):
    """The disk (or the database's size limit) is full; the write was rolled back."""


class StorageIOError(NerveError, OSError):
    """The operating system reported an I/O error; the write was rolled back."""


# --- search ---------------------------------------------------------------------


class SearchQueryError(NerveError, ValueError):
    """A full-text query is malformed."""


# --- blobs ------------------------------------------------------------------------


class BlobError(NerveError):
    """A problem with the blob store."""


class InvalidBlobDigest(BlobError, ValueError):
    """A blob digest is not 64 lowercase hex characters."""


class BlobNotFoundError(BlobError, FileNotFoundError):
    """No blob is stored under that digest."""


class BlobIntegrityError(BlobError):
    """A stored blob's content does not match its digest: it was altered."""


# --- archive --------------------------------------------------------------------------


class ArchiveError(NerveError):
    """The cold tier of the log (archive files) is missing or altered."""


# --- configuration and the runtime ---------------------------------------------------


class ConfigError(NerveError, ValueError):
    """A workflow, sense, reflex or config file is malformed."""


class UnknownWorkflowError(NerveError, LookupError):
    """No workflow of that name is defined."""


class KernelClosedError(NerveError):
    """The kernel is shutting down or closed; it admits no new work."""


class ActorError(NerveError):
    """A problem with an actor."""


class MailboxFull(ActorError):
    """An actor's mailbox is full and its overflow policy is ``fail``."""


class ActorStoppedError(ActorError):
    """The actor has stopped; it takes no more messages."""


class ActorFailed(ActorError):
    """An actor kept failing past its restart limit; the failure escalates."""


class AskTimeout(ActorError, TimeoutError):
    """An actor did not answer an ``ask`` in time."""


class StepMismatchError(NerveError):
    """A resumed run called its steps in a different order than before."""
