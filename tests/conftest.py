"""Each stage's session fixtures live in their own module; later stages build on earlier ones."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.model",
    "tests.fixtures.export",
    "tests.fixtures.server",
]
