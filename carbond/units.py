"""The two constants every module's arithmetic shares (one home: no module keeps its own copy)."""

HALF_HOUR = 1800
"""Seconds in the grid's pricing period: intensity is published per UTC half-hour."""
J_PER_KWH = 3.6e6
