"""Readers and writers of disk images (raw files and block devices)."""
