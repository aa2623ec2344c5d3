"""QA follow-ups that have no better home: the QMP documentation checked against the server.

``docs/qmp.md`` promises exact error texts for the JSON the server refuses and a
rule for socket paths; these tests run the live server against what the page
says, so the page cannot drift from the code.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpuplug.errors import UsageError
from cpuplug.vmm.machine import VirtMachine
from cpuplug.vmm.sockpath import claim_socket_path
from cpuplug.vmm.vsock import AgentChannelDevice, AgentChannelError
from tests.e2e.test_qa_bad_input import _qmp_exchange, machine, sock_dir

__all__ = ["machine", "sock_dir"]  # fixtures shared with test_qa_bad_input

DOC = Path(__file__).resolve().parents[2] / "docs" / "qmp.md"

# What to send for each documented refusal (keyed by the start of its desc).
STRICT_INPUTS = {
    "JSON parse error, duplicate key": b'{"execute": "query-status", "execute": "quit"}\n',
    "JSON parse error, invalid token": b'{"execute": "query-status", "id": NaN}\n',
    "JSON parse error, number": b'{"execute": "query-status", "id": 1e999}\n',
    "JSON parse error, integer of": b'{"execute": "query-status", "id": ' + b"7" * 1001 + b"}\n",
    "JSON parse error, control character": b'{"execute": "query-st\n',
}


def _doc_section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start : end if end != -1 else len(text)]


def _documented_strict_errors() -> list[str]:
    rows = [line for line in _doc_section("### Strict JSON").splitlines() if line.startswith("| ")]
    descs = [re.findall(r"`([^`]*)`", row.rsplit("|", 2)[1]) for row in rows[1:]]
    return [d[0] for d in descs if d]


def test_documented_strict_json_errors_are_what_the_server_says(
    machine: VirtMachine, sock_dir: Path
) -> None:
    documented = _documented_strict_errors()
    assert len(documented) == len(STRICT_INPUTS), documented
    for desc in documented:
        key = next(k for k in STRICT_INPUTS if desc.startswith(k))
        data = STRICT_INPUTS[key]
        # Afterwards a good command must still be served on the same connection.
        got = _qmp_exchange(
            machine, str(sock_dir / "q.sock"), data + b'{"execute": "query-status"}\n', 2
        )
        want = re.escape(desc).replace(r"\ N\ ", r"\ [0-9]+\ ")
        assert "id" not in got[0], got
        assert got[0]["error"]["class"] == "GenericError"
        assert re.fullmatch(want, got[0]["error"]["desc"]), (desc, got[0])
        assert got[1]["return"]["status"] == "running"


def test_documented_finite_large_number_is_accepted(machine: VirtMachine, sock_dir: Path) -> None:
    assert "(`1.5e308`), are accepted" in _doc_section("### Strict JSON")
    got = _qmp_exchange(
        machine, str(sock_dir / "q.sock"), b'{"execute": "query-status", "id": 1.5e308}\n', 1
    )
    assert got[0]["id"] == 1.5e308 and "return" in got[0]


@pytest.fixture
def live(sock_dir: Path) -> Iterator[Path]:
    path = sock_dir / "live.sock"
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(str(path))
    owner.listen(1)
    yield path
    owner.close()


def test_documented_socket_rule_is_shared_by_qmp_and_agent(live: Path, sock_dir: Path) -> None:
    section = _doc_section("## Socket paths")
    assert "`--qmp socket PATH is in use by another process`" in section
    with pytest.raises(UsageError, match=f"^--qmp socket {live} is in use by another process$"):
        claim_socket_path(str(live), "--qmp")
    dev = AgentChannelDevice(live)
    with pytest.raises(AgentChannelError, match=f"^agent socket {live} is in use"):
        dev.start()
    dev.close()
    assert live.exists()
    stale = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    claim_socket_path(str(stale), "--qmp")  # stale: removed, as documented
    assert not stale.exists()
    (sock_dir / "file").write_text("mine")
    with pytest.raises(UsageError, match="a file that is not a socket; refusing to replace it"):
        claim_socket_path(str(sock_dir / "file"), "--qmp")
