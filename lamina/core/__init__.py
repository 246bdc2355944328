"""Domain types, errors and settings shared by every Lamina process."""
