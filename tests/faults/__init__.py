"""Fault injection: real processes, real signals (kills, SIGTERM, full or read-only disks)."""
