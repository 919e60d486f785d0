"""Built-in sam skills."""
