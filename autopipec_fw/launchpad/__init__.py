"""launchpad stage."""
