"""Desired-state store: one interface, a SQLite (standalone) and a Kubernetes backend."""
