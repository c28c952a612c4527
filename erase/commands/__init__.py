"""Subcommands of the `erase` CLI: each module has add_arguments(parser) and run(args)."""
