"""Schedules: stream programs (`program`: launches, forks, joins, events; happens-before), their
check against the layer's reads and writes (`validate`), and the capture graph a program makes
(`graph`: HIP physical streams, critical path)."""

__all__ = ["graph", "program", "validate"]
