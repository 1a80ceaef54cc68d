"""Booting recovery points under QEMU: instant VM recovery and restore drills."""
