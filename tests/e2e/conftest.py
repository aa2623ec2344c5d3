"""Fixtures for tests/e2e: ``cli`` (the command as a user runs it)."""

from tests.harness.cli import cli

__all__ = ["cli"]
