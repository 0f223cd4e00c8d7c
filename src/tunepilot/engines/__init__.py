"""tunepilot.engines."""
