"""sam.bench."""
