"""Tests that need a real PostgreSQL (tests/fixtures/postgres.py): migrations, registry, catalog sync, RLS, doctor."""
