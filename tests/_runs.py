"""``workflow_runs`` variants for tests: its two ways of folding a history.

A fresh build (rebuild, replay, verify) folds ``workflow_runs`` in one SQL
query where it can (`WorkflowRuns.bulk_fold`) and event by event where it
cannot; tests compare the two and check which one ran.
"""

from __future__ import annotations

import apsw

from nerve.projections import WorkflowRuns


class EventByEventRuns(WorkflowRuns):
    """``workflow_runs`` that never folds in SQL: every fresh build goes
    event by event, page by page."""

    def bulk_fold(self, conn: apsw.Connection, source: str, upto: int) -> bool:
        return False


class SpiedRuns(WorkflowRuns):
    """``workflow_runs`` that records whether each fresh build folded in SQL."""

    def __init__(self) -> None:
        super().__init__()
        self.bulk: list[bool] = []

    def bulk_fold(self, conn: apsw.Connection, source: str, upto: int) -> bool:
        took = super().bulk_fold(conn, source, upto)
        self.bulk.append(took)
        return took
