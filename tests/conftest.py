"""Shared test fixtures.

``vmm`` starts real ``cpuplug vmm`` processes (modules with another kind of VMM
fixture define their own ``vmm``).

ACPICA (iasl, acpiexec) is the outside judge of our tables and AML. Locally a
missing ACPICA skips those tests; in CI (CI=true) it fails them, so the judge
can never silently go away.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.vmm_test_kernel import VmmProcess, running_vmm

DATA = Path(__file__).resolve().parent / "data"


def require_tool(name: str) -> str:
    """The path of an external tool; skip without it, or fail when CI=true."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is required in CI (apt-get install acpica-tools)")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
def iasl() -> str:
    return require_tool("iasl")


@pytest.fixture
def acpiexec() -> str:
    return require_tool("acpiexec")


@pytest.fixture
def vectors() -> Path:
    """Tables and a QMP transcript from real QEMU + Linux (``tests/data/README.md``)."""
    return DATA


@pytest.fixture
def vmm() -> Iterator[Callable[..., VmmProcess]]:
    """Factory for VMM processes; every one is stopped and its directory removed."""
    with contextlib.ExitStack() as started:

        def make(smp: str = "cpus=1,maxcpus=4", **kw: Any) -> VmmProcess:
            return started.enter_context(running_vmm(smp, **kw))

        yield make
