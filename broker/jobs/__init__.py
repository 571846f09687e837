"""Scheduled jobs: the list of what runs when (``schedule``), the scheduler, and the wrapper
that makes each slot run once across replicas (``run_once``)."""
