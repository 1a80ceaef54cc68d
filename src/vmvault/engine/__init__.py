"""Backup and restore pipelines, throttling and progress events."""
