"""Drift detection: input and output statistics of a baseline vs new images (features, baseline,
drift, window); see docs/monitoring.md."""
