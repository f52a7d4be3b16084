"""Command-line tools around a finished run: plots, evaluation of checkpoints, export for deployment."""
