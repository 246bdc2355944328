"""The Python runtime: its bootstrap runs inside every Python worker (standard library only)."""
