"""The actor runtime: workflows, senses and reflexes in trio nurseries."""
