"""Read models folded from the log: checkpointed, exactly-once, rebuildable.

`workflow_runs` is folded inline, in the append transaction; each sense
group's `_signals` (and the knowledge index) are folded asynchronously into
their own databases by a `ProjectionRunner`. `rebuild` refolds one from the
whole history and swaps it in atomically; `replay` builds fresh databases
elsewhere; `verify` compares the live models with a fresh replay.
"""

from ._api import rebuild as rebuild
from ._base import Checkpoint as Checkpoint
from ._base import Progress as Progress
from ._base import Projection as Projection
from ._base import ProjectionStatistics as ProjectionStatistics
from ._base import SkippedEventWarning as SkippedEventWarning
from ._inline import InlineProjection as InlineProjection
from ._inline import attach_inline as attach_inline
from ._replay import Difference as Difference
from ._replay import replay as replay
from ._replay import verify as verify
from ._runner import ProjectionRecoveredWarning as ProjectionRecoveredWarning
from ._runner import ProjectionRunner as ProjectionRunner
from ._signals import SignalRecord as SignalRecord
from ._signals import Signals as Signals
from ._signals import read_signals as read_signals
from ._signals import signals_database as signals_database
from ._workflow_runs import RunQueries as RunQueries
from ._workflow_runs import RunRecord as RunRecord
from ._workflow_runs import WorkflowRuns as WorkflowRuns
