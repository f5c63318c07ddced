"""Batch ingestion: tenants' files from ``staging/<tenant>/`` into their databases."""
