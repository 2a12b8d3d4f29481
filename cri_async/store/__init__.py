"""Durable state: SQLite (WAL) behind in-memory indexes."""
