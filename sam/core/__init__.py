"""sam.core."""
