"""invdiff."""
