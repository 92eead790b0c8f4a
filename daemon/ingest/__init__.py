"""Ingest: decode, check, dedupe, split and log each train message, then acknowledge it."""
