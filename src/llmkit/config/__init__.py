"""The run config: schema, loading, presets and the commented starter file."""

from llmkit.config.load import ConfigProblems, Problem, dump_config, load_config, validate_config
from llmkit.config.schema import RunConfig

__all__ = [
    "ConfigProblems",
    "Problem",
    "RunConfig",
    "dump_config",
    "load_config",
    "validate_config",
]
