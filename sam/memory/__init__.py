"""sam.memory."""
