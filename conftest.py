"""Root conftest: every module in tests/fixtures/ is a pytest plugin (fixtures shared by all tests)."""

import pkgutil
from pathlib import Path

import pytest

# Fixture modules import each other (the sandbox builds on the town): rewrite their asserts whichever
# is imported first.
pytest.register_assert_rewrite("tests.fixtures")

pytest_plugins = [
    f"tests.fixtures.{module.name}"
    for module in pkgutil.iter_modules([str(Path(__file__).parent / "tests" / "fixtures")])
]
