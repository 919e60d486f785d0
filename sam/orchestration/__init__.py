"""sam.orchestration."""
