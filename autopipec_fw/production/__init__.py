"""production stage."""
