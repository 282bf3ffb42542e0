"""Tests of the example services in services/ (each on a shared in-memory bus)."""
