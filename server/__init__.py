"""Orderly: sequenced, resumable generation streams over PostgreSQL."""
