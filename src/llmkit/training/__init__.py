"""Training: the one loop, its optimizer and schedule, checkpoints, signals and metrics."""
