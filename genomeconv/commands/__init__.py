"""CLI command groups: each module defines `register(app)` adding its typer commands."""
