"""Alembic migrations of the store, run by `headway.store.Store.migrate` (no alembic.ini)."""
