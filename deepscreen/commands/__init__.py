"""Subcommands of the `deepscreen` script that live in the kernel."""
