"""Ending what is in force at once: suspending or retiring a policy, retiring a service.

Each of these changes a row below (a policy's status, a service's) and revokes the live keys
it covers in the same transaction, so it sits above both the domain that owns the row and
the revocation feed that tells verifiers.
"""
