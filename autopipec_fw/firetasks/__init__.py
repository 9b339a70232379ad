"""firetasks stage."""
