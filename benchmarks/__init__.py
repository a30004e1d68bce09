"""aisle."""
