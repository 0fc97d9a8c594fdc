"""One module per command, each with run(...) and format_report(...) (see docs/architecture.md)."""
