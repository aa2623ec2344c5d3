"""The cpuplug files copied into the guest: the recipe's roots and every cpuplug module
they import, found without importing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpuplug.image.agent_sources import PACKAGE, agent_sources, digest
from cpuplug.image.errors import ImageError
from cpuplug.image.recipe import CPUPLUG_ROOTS


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "cpuplug"
    files = {
        "__init__.py": "",
        "errors.py": "import os\n",
        "hw.py": "from cpuplug import errors\n",
        "guest/__init__.py": '"""The guest."""\n',
        "guest/agent.py": (
            "from __future__ import annotations\n"
            "from cpuplug.hw import (\n    Cpu,  # a comment\n    Stream,\n)\n"
            "from . import util\n"
            "def f():\n    import cpuplug.acpi.tables as t\n"
        ),
        "guest/util.py": "from ..proto import x\n",
        "proto.py": "x = 1\n",
        "acpi/__init__.py": "",
        "acpi/tables.py": "from cpuplug.acpi.aml import nodes\n",
        "acpi/aml/__init__.py": "",
        "acpi/aml/nodes.py": "",
        "acpi/unused.py": "",
        "runtime/__init__.py": "",
        "runtime/sandbox.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_closure_over_absolute_relative_and_nested_imports(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    files = agent_sources(("__init__.py", "errors.py", "guest/"), pkg)
    assert list(files) == [
        "cpuplug/__init__.py",
        "cpuplug/acpi/__init__.py",
        "cpuplug/acpi/aml/__init__.py",
        "cpuplug/acpi/aml/nodes.py",
        "cpuplug/acpi/tables.py",
        "cpuplug/errors.py",
        "cpuplug/guest/__init__.py",
        "cpuplug/guest/agent.py",
        "cpuplug/guest/util.py",
        "cpuplug/hw.py",
        "cpuplug/proto.py",
    ]
    assert files["cpuplug/hw.py"] == pkg / "hw.py"


def test_a_missing_root_is_one_line(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    with pytest.raises(ImageError, match=r"cpuplug file nope\.py is missing"):
        agent_sources(("nope.py",), pkg)
    with pytest.raises(ImageError, match="cpuplug package nope/ is missing"):
        agent_sources(("nope/",), pkg)


def test_digest_follows_content_and_names(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    files = agent_sources(("hw.py",), pkg)
    before = digest(files)
    assert digest(dict(reversed(list(files.items())))) == before
    (pkg / "errors.py").write_text("import os  # edited\n")
    assert digest(files) != before


def test_the_real_recipe_copies_the_agents_seams_and_no_party_it_does_not_need() -> None:
    files = agent_sources(CPUPLUG_ROOTS)
    for name in ("__init__.py", "errors.py", "agent_protocol.py", "strict_json.py",
                 "cpuhp_abi.py", "psci_abi.py", "hw.py", "guest/__init__.py",
                 "guest/agent.py"):
        assert f"cpuplug/{name}" in files
    assert all(p.is_relative_to(PACKAGE) for p in files.values())
    assert not [f for f in files if f.startswith(("cpuplug/vmm/", "cpuplug/runtime/",
                                                  "cpuplug/image/"))]
