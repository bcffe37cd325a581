"""`python -m llmkit` is the same as the `llmkit` command."""

from llmkit.cli.main import main

if __name__ == "__main__":
    main()
