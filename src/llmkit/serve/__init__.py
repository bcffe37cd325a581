"""`llmkit serve`: an OpenAI-compatible HTTP server over the continuous-batching engine."""

from llmkit import api_package

api_package(__name__)  # calling `llmkit.serve(...)` calls llmkit.api.serve
