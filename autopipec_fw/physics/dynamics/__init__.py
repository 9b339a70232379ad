"""physics dynamics stage."""
