"""nerve: an event-sourced actor runtime for Python on trio.

Every write is an event appended to one durable SQLite log; read models are
projections folded from it and can be rebuilt by replaying the history.
"""

from ._gc import DEFAULT_GC_THRESHOLD as DEFAULT_GC_THRESHOLD
from ._gc import gc_tuned as gc_tuned
from .actors import App as App
from .actors import Outcome as Outcome
from .actors import Run as Run
from .actors import RunHandle as RunHandle
from .actors import Sense as Sense
from .events import NO_STREAM as NO_STREAM
from .events import STREAM_EXISTS as STREAM_EXISTS
from .events import ActorError as ActorError
from .events import ActorFailed as ActorFailed
from .events import ActorStoppedError as ActorStoppedError
from .events import AppendError as AppendError
from .events import AppendResult as AppendResult
from .events import AppendWithdrawnError as AppendWithdrawnError
from .events import ArchiveError as ArchiveError
from .events import AskTimeout as AskTimeout
from .events import BlobError as BlobError
from .events import BlobIntegrityError as BlobIntegrityError
from .events import BlobNotFoundError as BlobNotFoundError
from .events import BlobStore as BlobStore
from .events import ConfigError as ConfigError
from .events import CorruptDatabaseError as CorruptDatabaseError
from .events import DatabaseError as DatabaseError
from .events import DuplicateIdempotencyKey as DuplicateIdempotencyKey
from .events import EventDecodingError as EventDecodingError
from .events import EventEncodingError as EventEncodingError
from .events import EventRegistry as EventRegistry
from .events import InvalidBlobDigest as InvalidBlobDigest
from .events import InvalidEventError as InvalidEventError
from .events import KernelClosedError as KernelClosedError
from .events import Log as Log
from .events import LogClosedError as LogClosedError
from .events import LogStatistics as LogStatistics
from .events import MailboxFull as MailboxFull
from .events import MigrationChecksumError as MigrationChecksumError
from .events import NerveError as NerveError
from .events import NewerSchemaError as NewerSchemaError
from .events import NewEvent as NewEvent
from .events import NotADatabaseError as NotADatabaseError
from .events import RecordedEvent as RecordedEvent
from .events import RefusedByProjection as RefusedByProjection
from .events import SchemaError as SchemaError
from .events import SearchHit as SearchHit
from .events import SearchQueryError as SearchQueryError
from .events import StepMismatchError as StepMismatchError
from .events import StorageFullError as StorageFullError
from .events import StorageIOError as StorageIOError
from .events import UnknownEventTypeError as UnknownEventTypeError
from .events import UnknownWorkflowError as UnknownWorkflowError
from .events import WrongExpectedVersion as WrongExpectedVersion
from .events import event as event
from .events import open_log as open_log
from .kernel import Kernel as Kernel
from .kernel import open_kernel as open_kernel
from .kernel import request_trigger as request_trigger

__version__ = "0.1.0.dev0"
