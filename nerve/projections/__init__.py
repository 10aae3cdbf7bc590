"""Read models folded from the log (workflow_runs, _signals, knowledge)."""
