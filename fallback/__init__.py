"""Local fallback schedule used when no valid cloud plan is available."""
