"""The anomaly rules (``anomalies``), their configuration and windows, and how signals reach
them (``intake``, ``queue``, ``worker``); leak reports and released evidence."""
