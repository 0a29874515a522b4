"""Command-line tools on the core, byte-compatible with the official package's where they overlap."""
