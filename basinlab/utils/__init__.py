"""Small shared helpers: atomic file writes, argument checks, figures (no global matplotlib backend)."""
