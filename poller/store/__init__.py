"""Snapshot stores: SQLite (embedded default), PostgreSQL (shared/HA) and memory (tests)."""
