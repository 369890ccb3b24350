"""Fault injection: real processes, real signals (issue 16)."""
