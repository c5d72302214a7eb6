"""CLI commands (placeholder: filled in by the area that owns it)."""

COMMANDS = []
