"""Training: the one loop, its optimizer and schedule, checkpoints, signals and metrics."""

from llmkit import api_package

api_package(__name__)  # calling `llmkit.train(...)` calls llmkit.api.train
