"""sam: assistants that learn from their users for life (MEMOIR-style lifelong model editing)."""

__version__ = "0.1.0"
