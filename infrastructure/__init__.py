"""Adapters to the outside world: PostgreSQL, Redis, Dramatiq, HTTP providers, storage, logging."""
