"""tunepilot.report."""
