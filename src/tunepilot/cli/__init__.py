"""Command-line interface: thin wrappers over command functions."""
