"""tunepilot: find good fine-tuning hyperparameters before the expensive run."""

__version__ = "0.1.0"
