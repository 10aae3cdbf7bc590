"""The actor runtime: actors, workflows, senses and reflexes in trio nurseries."""

from ._actor import Actor as Actor
from ._actor import ActorStatistics as ActorStatistics
from ._app import App as App
from ._app import ReflexSpec as ReflexSpec
from ._app import SenseSpec as SenseSpec
from ._app import WorkflowSpec as WorkflowSpec
from ._eventsourced import EventSourcedActor as EventSourcedActor
from ._mailbox import Mailbox as Mailbox
from ._mailbox import Overflow as Overflow
from ._run import Outcome as Outcome
from ._run import Run as Run
from ._run import RunHandle as RunHandle
from ._sense import Sense as Sense
from ._sense import SenseGroupActor as SenseGroupActor
from ._workflow import Trigger as Trigger
from ._workflow import WorkflowActor as WorkflowActor
from ._workflow import WorkflowStatistics as WorkflowStatistics
from ._workflow import new_run_id as new_run_id
