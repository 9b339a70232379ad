"""Root conftest: the shared fixtures live in tests/fixtures/ (one module per area)."""

pytest_plugins = [
    "tests.fixtures.potentials",
    "tests.fixtures.eon",
    "tests.fixtures.launchpad",
    "tests.fixtures.slurm",
]
