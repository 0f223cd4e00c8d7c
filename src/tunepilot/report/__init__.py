"""tunepilot.report: HTML reports (sweeps: leaderboard, decisions, Optuna plots, learning curves)."""

from tunepilot.report.sweep import sweep_report

__all__ = ["sweep_report"]
