"""tunepilot.data."""
