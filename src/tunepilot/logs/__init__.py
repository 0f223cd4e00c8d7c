"""tunepilot.logs."""
