"""What a run leaves behind: checkpoints, metrics.jsonl and console reports, logger sinks, held-out metrics."""
