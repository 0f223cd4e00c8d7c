"""Task evaluation by generation: metrics, batched generation, and `evaluate_model` as an objective."""
