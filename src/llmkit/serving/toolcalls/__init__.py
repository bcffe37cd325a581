"""Tool calls in the model's own format: one parser per format (``registry.TOOL_PARSERS``)."""
