"""Health, readiness, metrics and the ``.well-known`` documents."""
