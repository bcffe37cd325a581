"""The `llmkit` command line: thin commands over the library (see main.py for the registry)."""
