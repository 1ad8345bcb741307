"""invdiff-train configs."""
