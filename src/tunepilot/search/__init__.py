"""tunepilot.search."""
