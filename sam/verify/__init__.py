"""sam.verify."""
