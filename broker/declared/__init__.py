"""Policies as code: the broker's configuration declared in a directory of files.

A team keeps its fields, purposes, services, policies and anomaly rules in a repository;
``plan`` compares the files with what is in force, ``apply`` makes exactly those changes
(catalog, services and rules directly; policies as proposals, approved by rule where they
only narrow), ``export`` writes what is in force as such files.
"""
