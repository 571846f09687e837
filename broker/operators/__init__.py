"""Operators: people (and their tokens) who administer the broker, their roles, sign-in
and lockout, and the independence approvals need."""
