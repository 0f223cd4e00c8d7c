"""tunepilot.health."""
