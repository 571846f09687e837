"""The peers bench/masking.py measures the broker's masking against: Microsoft Presidio's
structured anonymizer in process, and behind a small Flask masking service. These modules
run in their own virtualenv (bench/.venv-peers, ``make bench-deps``), never in the
development one: only ``workload`` is imported by both sides.
"""
