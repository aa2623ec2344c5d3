"""The guest agent over a fake agent channel, against the fake kernel (real vfs/cgroups/sched)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.guest.agent import Agent
from tests.harness.guest_fakes import FakeChannel, FakeKernel
from tests.harness.machine import GuestMachine

CG = "/sys/fs/cgroup"


class Env:
    def __init__(self, kernel: FakeKernel, **agent_kw: Any) -> None:
        self.kernel = kernel
        self.channel = FakeChannel()
        self.agent = Agent(kernel, self.channel, **agent_kw).start()
        self.sock = self.connect()
        self._ids = 0

    def connect(self) -> socket.socket:
        return self.channel.connect()

    def call(self, method: ap.Method, params: dict[str, Any] | None = None,
             sock: socket.socket | None = None, timeout: float = 20) -> dict[str, Any]:  # fmt: skip
        self._ids += 1
        return ap.call(sock or self.sock, method, params or {}, timeout=timeout, req_id=self._ids)

    def error(self, method: ap.Method, params: dict[str, Any]) -> ap.AgentError:
        with pytest.raises(ap.AgentError) as info:
            self.call(method, params)
        return info.value

    def raw(self, data: bytes, sock: socket.socket | None = None) -> dict[str, Any]:
        s = sock or self.sock
        s.sendall(data)
        return ap.recv_message(s, timeout=10)

    def close(self) -> None:
        self.agent.stop()
        self.channel.close()
        self.kernel.shutdown()


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env(FakeKernel(possible=12, online=2, enabled=2), retry_interval=0.01)
    yield e
    e.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("agent-")]


# ------------------------------------------------------------------ files and details


def test_guest_details_and_read_file(env: Env) -> None:
    assert env.call(ap.Method.GUEST_DETAILS) == {
        "possible": "0-11",
        "present": "0-11",
        "online": "0-1",
        "offline": "2-11",
        "enabled": "0-1",
        "kernel": "unknown",
    }
    env.kernel.vfs.register("/proc/version", lambda: "Linux version 6.11.0-x (model)\n")
    assert env.call(ap.Method.GUEST_DETAILS)["kernel"] == "6.11.0-x"
    assert env.call(ap.Method.READ_FILE, {"path": "/sys/devices/system/cpu/online"}) == {
        "data": "0-1\n"
    }
    err = env.error(ap.Method.READ_FILE, {"path": "/sys/devices/system/cpu/cpu5/online"})
    assert err.code is ap.ErrorCode.ENOENT
    assert err.message == "cat: /sys/devices/system/cpu/cpu5/online: No such file or directory"


# ------------------------------------------------------------------ malformed input


def test_malformed_messages_get_errors_and_serving_goes_on(env: Env) -> None:
    bad_json = b"{nope"
    reply = env.raw(struct.pack(">I", len(bad_json)) + bad_json)
    assert reply["id"] is None and reply["error"]["code"] == "EPROTO"
    reply = env.raw(ap.encode_frame({"id": 5, "method": "Reboot"}))
    assert reply == {"id": 5, "error": {"code": "ENOSYS", "message": "unknown method 'Reboot'"}}
    reply = env.raw(ap.encode_frame({"id": 6, "method": "OnlineCPUMem", "params": {"nb": 1}}))
    assert reply["id"] == 6 and reply["error"]["code"] == "EINVAL"
    reply = env.raw(struct.pack(">I", 0))
    assert reply["error"]["code"] == "EPROTO"
    reply = env.raw(ap.encode_frame({"id": 7}))
    assert reply["id"] == 7 and reply["error"]["code"] == "EPROTO"
    # still serving on the same connection
    assert env.call(ap.Method.READ_FILE, {"path": "/sys/devices/system/cpu/online"})


@pytest.mark.parametrize(
    "frame", [struct.pack(">I", ap.MAX_FRAME + 1), struct.pack(">I", 2) + b"\xff\xfe"]
)
def test_unrecoverable_frames_close_only_that_connection(env: Env, frame: bytes) -> None:
    other = env.connect()
    reply = env.raw(frame)
    assert reply["error"]["code"] == "EPROTO"
    with pytest.raises(ap.ConnectionClosed):
        ap.recv_message(env.sock, timeout=10)
    assert env.call(ap.Method.GUEST_DETAILS, sock=other)["online"] == "0-1"


def test_split_and_pipelined_frames(env: Env) -> None:
    data = b"".join(
        ap.encode_frame(ap.make_request(i, ap.Method.READ_FILE, {"path": f"{CG}/cpu.stat"}))
        for i in range(1, 4)
    )
    for i in range(0, len(data), 7):
        env.sock.sendall(data[i : i + 7])
    ids = [ap.recv_message(env.sock, timeout=10)["id"] for _ in range(3)]
    assert ids == [1, 2, 3]  # answered in order


def test_connection_limit(env: Env) -> None:
    env.agent.max_connections = 2
    second = env.connect()
    assert env.call(ap.Method.GUEST_DETAILS, sock=second)
    third = env.connect()
    reply = ap.recv_message(third, timeout=10)
    assert reply["error"]["code"] == "EBUSY"
    with pytest.raises(ap.ConnectionClosed):
        ap.recv_message(third, timeout=10)
    assert env.agent.thread_count() <= 2 + 2


def test_threads_do_not_grow_with_requests_or_closed_connections(env: Env) -> None:
    for _ in range(20):
        s = env.connect()
        env.call(ap.Method.GUEST_DETAILS, sock=s)
        s.close()
    for _ in range(50):
        env.call(ap.Method.GUEST_DETAILS)
    # closed connections' readers end; what is left: acceptor, events, and live readers
    deadline = threading.Event()
    for _ in range(500):
        if env.agent.thread_count() <= 3:
            break
        deadline.wait(0.01)
    assert env.agent.thread_count() <= 3


# ------------------------------------------------------------------ containers


def test_container_lifecycle(env: Env) -> None:
    env.call(
        ap.Method.CREATE_CONTAINER,
        {"container_id": "c1", "cmd": ["sleep", "30"], "cpuset_cpus": "1", "quota": 50000,
         "period": 100000},
    )  # fmt: skip
    vfs = env.kernel.vfs
    assert vfs.read(f"{CG}/c1/cpuset.cpus") == "1\n"
    assert vfs.read(f"{CG}/c1/cpu.max") == "50000 100000\n"
    assert env.error(ap.Method.CREATE_CONTAINER, {"container_id": "c1", "cmd": []}).code is (
        ap.ErrorCode.EEXIST
    )
    pid = env.call(ap.Method.START_CONTAINER, {"container_id": "c1"})["pid"]
    assert vfs.read(f"{CG}/c1/cgroup.procs") == f"{pid}\n"
    assert env.error(ap.Method.START_CONTAINER, {"container_id": "c1"}).code is ap.ErrorCode.EBUSY
    out = env.call(ap.Method.EXEC_PROCESS, {"container_id": "c1", "cmd": ["nproc"]})
    assert out == {"exit_code": 0, "stdout": "1\n", "stderr": ""}
    stats = env.call(ap.Method.STATS_CONTAINER, {"container_id": "c1"})
    assert stats["cpuset_effective"] == "1" and stats["tasks"] == 1
    assert set(stats["cpu"]) == {
        "usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled", "throttled_usec"
    }  # fmt: skip
    env.call(ap.Method.KILL_CONTAINER, {"container_id": "c1"})
    env.call(ap.Method.REMOVE_CONTAINER, {"container_id": "c1"})
    assert not vfs.exists(f"{CG}/c1")
    assert env.agent.containers() == []
    assert env.error(ap.Method.STATS_CONTAINER, {"container_id": "c1"}).code is (
        ap.ErrorCode.ENOENT
    )


def test_remove_kills_running_tasks(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "s", "cmd": ["stress", "--cpu", "2"]})
    env.call(ap.Method.START_CONTAINER, {"container_id": "s"})
    env.call(ap.Method.REMOVE_CONTAINER, {"container_id": "s"})
    assert env.kernel.sched.tasks() == []
    assert not env.kernel.vfs.exists(f"{CG}/s")


def test_create_with_bad_resources_leaves_nothing(env: Env) -> None:
    err = env.error(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": ["true"], "quota": 10})
    assert err.code is ap.ErrorCode.EINVAL and "cpu.max" in err.message
    err = env.error(
        ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": ["true"], "cpuset_cpus": "0-99"}
    )
    assert err.code is ap.ErrorCode.EINVAL
    assert err.message == f"write {CG}/c/cpuset.cpus: Invalid argument"
    assert not env.kernel.vfs.exists(f"{CG}/c") and env.agent.containers() == []


def test_exec_errors(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    err = env.error(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["vim"]})
    assert err.code is ap.ErrorCode.ENOENT and "vim" in err.message
    err = env.error(
        ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["sleep", "30"], "timeout": 0.1}
    )
    assert err.code is ap.ErrorCode.ETIMEDOUT
    assert env.kernel.sched.tasks() == []  # the timed-out process was killed
    out = env.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["cat", "/x"]})
    assert out == {"exit_code": 1, "stdout": "", "stderr": "cat: /x: No such file or directory\n"}
    err = env.error(ap.Method.START_CONTAINER, {"container_id": "c"})
    assert err.code is ap.ErrorCode.EINVAL
    assert env.error(ap.Method.EXEC_PROCESS, {"container_id": "zz", "cmd": ["true"]}).code is (
        ap.ErrorCode.ENOENT
    )


def test_update_container(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    vfs = env.kernel.vfs
    env.call(
        ap.Method.UPDATE_CONTAINER,
        {"container_id": "c", "resources": {"cpuset_cpus": "0-1", "quota": 150000,
                                            "period": 100000}},
    )  # fmt: skip
    assert vfs.read(f"{CG}/c/cpuset.cpus") == "0-1\n"
    assert vfs.read(f"{CG}/c/cpu.max") == "150000 100000\n"
    env.call(ap.Method.UPDATE_CONTAINER, {"container_id": "c", "resources": {"period": 50000}})
    assert vfs.read(f"{CG}/c/cpu.max") == "150000 50000\n"
    env.call(ap.Method.UPDATE_CONTAINER, {"container_id": "c", "resources": {"quota": -1}})
    assert vfs.read(f"{CG}/c/cpu.max") == "max 50000\n"
    # invalid cpu.max is refused before the cpuset is touched
    err = env.error(
        ap.Method.UPDATE_CONTAINER,
        {"container_id": "c", "resources": {"cpuset_cpus": "1", "period": 10}},
    )
    assert err.code is ap.ErrorCode.EINVAL
    assert vfs.read(f"{CG}/c/cpuset.cpus") == "0-1\n"


# ------------------------------------------------------------------ OnlineCPUMem


def test_online_cpu_mem_returns_at_once_when_enough(env: Env) -> None:
    env.kernel.hot_add(2)
    assert env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2, "cpu_only": True}) == {
        "online": [0, 1]
    }
    assert env.kernel.online_writes == []


def test_online_cpu_mem_onlines_ascending_and_updates_cpusets(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "a", "cmd": [], "cpuset_cpus": "0"})
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "b", "cmd": []})
    for cpu in (10, 2, 3):
        env.kernel.hot_add(cpu)
    result = env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 4, "cpu_only": True})
    assert result == {"online": [0, 1, 2, 3]}
    assert env.kernel.online_writes == [2, 3]  # numeric order; stops once enough (not 10)
    for cid in ("a", "b"):
        assert env.kernel.vfs.read(f"{CG}/{cid}/cpuset.cpus") == "0-3\n"
    result = env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 5, "cpu_only": True})
    assert result == {"online": [0, 1, 2, 3, 10]}
    assert env.kernel.online_writes == [2, 3, 10]  # cpu10 after cpu2/3: not read_dir order


def test_online_cpu_mem_retries_until_the_cpu_is_registered(env: Env) -> None:
    env.agent.retry_interval = 0.02
    # The runtime calls OnlineCPUMem right after device_add; the scan registers later.
    timer = threading.Timer(0.2, env.kernel.hot_add, args=(4,))
    timer.start()
    try:
        result = env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True})
    finally:
        timer.join()
    assert result == {"online": [0, 1, 4]}


def test_online_cpu_mem_bounded_failure(env: Env) -> None:
    env.agent.online_retries = 5
    err = env.error(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True})
    assert err.code is ap.ErrorCode.ETIMEDOUT
    assert err.message == "failed to online 1 CPU(s) after 5 retries"
    # a registered CPU the host refuses (PSCI DENIED → EPERM) is reported as such
    env.kernel.enabled_set = env.kernel.enabled_set | {6}
    env.kernel._register_cpu(6)
    err = env.error(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True})
    assert err.code is ap.ErrorCode.EPERM
    assert err.message.endswith("last error: cpu6: Operation not permitted")
    assert env.kernel.online_writes == [6] * 5


def test_online_cpu_mem_zero_changes_nothing(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "a", "cmd": [], "cpuset_cpus": "1"})
    assert env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 0, "cpu_only": False}) == {
        "online": [0, 1]
    }
    assert env.kernel.vfs.read(f"{CG}/a/cpuset.cpus") == "1\n"


# ------------------------------------------------------ OfflineCPUs (docs/contract.md §9)


def test_offline_cpus_highest_first_down_to_the_target_and_sets_cpusets(env: Env) -> None:
    for cpu in (2, 3, 10):
        env.kernel.hot_add(cpu)
    env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 5, "cpu_only": True})
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "a", "cmd": [], "cpuset_cpus": "3"})
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "b", "cmd": []})
    env.kernel.online_writes.clear()
    assert env.call(ap.Method.OFFLINE_CPUS, {"nb_cpus": 2}) == {"online": [0, 1]}
    assert env.kernel.online_writes == [10, 3, 2]  # numerically highest first
    assert env.call(ap.Method.GUEST_DETAILS)["online"] == "0-1"
    for cid in ("a", "b"):
        assert env.kernel.vfs.read(f"{CG}/{cid}/cpuset.cpus") == "0-1\n"
    # at or above the online count: nothing is written
    assert env.call(ap.Method.OFFLINE_CPUS, {"nb_cpus": 4}) == {"online": [0, 1]}
    assert env.kernel.online_writes == [10, 3, 2]
    # down to one: CPU 1 goes, CPU 0 (the boot CPU) stays
    assert env.call(ap.Method.OFFLINE_CPUS, {"nb_cpus": 1}) == {"online": [0]}
    assert env.kernel.online_writes == [10, 3, 2, 1]
    assert env.kernel.vfs.read(f"{CG}/a/cpuset.cpus") == "0\n"
    # and OnlineCPUMem grows back from there
    assert env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3}) == {"online": [0, 1, 2]}


@pytest.mark.parametrize(
    "params",
    [{"nb_cpus": 0}, {"nb_cpus": -1}, {"nb_cpus": "1"}, {"nb_cpus": True}, {"nb_cpus": 1.0},
     {}, {"nb_cpus": 1, "cpu_only": True}],
)  # fmt: skip
def test_offline_cpus_bad_params_are_einval_and_change_nothing(
    env: Env, params: dict[str, Any]
) -> None:
    env.kernel.hot_add(2)
    env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3})
    env.kernel.online_writes.clear()
    # sent raw: the client library would refuse them before they left
    reply = ap.parse_incoming(env.raw(ap.encode_frame(ap.make_request(7, "OfflineCPUs", params))))
    assert isinstance(reply, ap.ErrorReply) and reply.id == 7
    assert reply.code == "EINVAL" and reply.message.startswith("OfflineCPUs: ")
    with pytest.raises(ap.ProtocolError):
        env.call(ap.Method.OFFLINE_CPUS, params)
    assert env.kernel.online_writes == []
    assert env.call(ap.Method.GUEST_DETAILS)["online"] == "0-2"


def test_offline_cpus_reports_the_kernels_errno_and_leaves_cpusets_on_online_cpus(
    env: Env,
) -> None:
    import errno

    from cpuplug.guest.vfs import GuestOSError

    for cpu in (2, 3):
        env.kernel.hot_add(cpu)
    env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 4})
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "a", "cmd": []})

    def busy(_data: str) -> None:
        raise GuestOSError(errno.EBUSY, "/sys/devices/system/cpu/cpu2/online")

    env.kernel.vfs.unregister("/sys/devices/system/cpu/cpu2/online")
    env.kernel.vfs.register("/sys/devices/system/cpu/cpu2/online", lambda: "1\n", busy)
    err = env.error(ap.Method.OFFLINE_CPUS, {"nb_cpus": 1})
    assert err.code is ap.ErrorCode.EBUSY
    assert "cpu2" in err.message
    # cpu3 went before cpu2 refused; the container follows what is really online
    assert env.call(ap.Method.GUEST_DETAILS)["online"] == "0-2"
    assert env.kernel.vfs.read(f"{CG}/a/cpuset.cpus") == "0-2\n"


# ------------------------------------------------------------------ events


def test_subscribe_events_streams_kernel_events_in_order(env: Env) -> None:
    sub = env.connect()
    assert env.call(ap.Method.SUBSCRIBE_EVENTS, sock=sub) == {}
    env.kernel.hot_add(5)
    env.kernel.emit("OstSent", cpu=5, source=1, status=0)
    env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True})
    got = [ap.parse_incoming(ap.recv_message(sub, timeout=10)) for _ in range(3)]
    assert all(isinstance(e, ap.Event) for e in got)
    assert [(e.name, e.data) for e in got if isinstance(e, ap.Event)] == [
        ("CpuRegistered", {"cpu": 5}),
        ("OstSent", {"cpu": 5, "source": 1, "status": 0}),
        ("CpuOnline", {"cpu": 5}),
    ]
    # the subscriber may still make requests on the same connection
    env._ids += 1
    ap.send_request(sub, 99, ap.Method.GUEST_DETAILS, {})
    msg = ap.parse_incoming(ap.recv_message(sub, timeout=10))
    assert isinstance(msg, ap.Reply) and msg.id == 99
    # a connection that did not subscribe gets no events
    env.kernel.emit("CpuOffline", cpu=5)
    sub_ev = ap.parse_incoming(ap.recv_message(sub, timeout=10))
    assert isinstance(sub_ev, ap.Event) and sub_ev.name == "CpuOffline"
    env.sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        env.sock.recv(1)


def test_slow_subscriber_is_dropped_without_blocking_the_kernel(env: Env) -> None:
    sub = env.connect()
    env.call(ap.Method.SUBSCRIBE_EVENTS, sock=sub)
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for i in range(50_000):  # never read: the emitter must not block
        env.kernel.emit("CpuOnline", cpu=i % 8)
    assert env.call(ap.Method.GUEST_DETAILS)["online"] == "0-1"  # the agent still serves
    received = 0
    with pytest.raises(ap.ConnectionClosed):  # the subscriber was cut off ...
        while True:
            ap.recv_message(sub, timeout=10)
            received += 1
    assert received < 50_000  # ... instead of being fed without bound


def test_a_handler_bug_costs_one_request_not_the_agent(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_conn: object, _params: object) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setitem(env.agent._handlers, ap.Method.GUEST_DETAILS, broken)
    err = env.error(ap.Method.GUEST_DETAILS, {})
    assert err.code is ap.ErrorCode.EIO and "boom" in err.message
    assert env.call(ap.Method.READ_FILE, {"path": "/sys/devices/system/cpu/online"})


# ------------------------------------------------------------------ the real guest kernel


def test_real_kernel_hot_add_then_online_cpu_mem(machine_agent: GuestMachine) -> None:
    vm = machine_agent
    assert vm.call(ap.Method.GUEST_DETAILS) == {
        "possible": "0-3",
        "present": "0-3",
        "online": "0",
        "offline": "1-3",
        "enabled": "0",
        "kernel": "6.11.0-cpuplug",
    }
    sub = vm.connect()
    vm.call(ap.Method.SUBSCRIBE_EVENTS, sock=sub)
    vm.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": [], "cpuset_cpus": "0"})
    for core in (1, 2):
        vm.machine.device_add("max-arm-cpu", f"cpu-{core}", {"core-id": core})
        assert vm.ost() == (1, 0)
    assert vm.call(ap.Method.GUEST_DETAILS)["enabled"] == "0-2"
    assert vm.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True}) == {
        "online": [0, 1, 2]
    }
    assert vm.kernel.vfs.read(f"{CG}/c/cpuset.cpus") == "0-2\n"
    out = vm.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["nproc"]})
    assert out["stdout"] == "3\n"
    # a running stress uses the hot-added CPUs
    out = vm.call(
        ap.Method.EXEC_PROCESS,
        {"container_id": "c", "cmd": ["stress", "--cpu", "3", "--timeout", "0.5"]},
    )
    assert out["exit_code"] == 0
    used = ap.parse_cpu_list(out["stdout"].split("on CPUs ")[1].splitlines()[0])
    assert used & {1, 2}, out["stdout"]
    stats = vm.call(ap.Method.STATS_CONTAINER, {"container_id": "c"})
    assert stats["cpu"]["usage_usec"] > 0 and stats["cpuset_effective"] == "0-2"
    names: list[tuple[str, dict[str, Any]]] = []
    while len([n for n in names if n[0] == "CpuOnline"]) < 2:
        ev = ap.parse_incoming(ap.recv_message(sub, timeout=10))
        assert isinstance(ev, ap.Event)
        names.append((ev.name, ev.data))
    assert ("CpuRegistered", {"cpu": 1}) in names
    assert ("OstSent", {"cpu": 1, "source": 1, "status": 0}) in names
    assert names.index(("CpuRegistered", {"cpu": 2})) < names.index(("CpuOnline", {"cpu": 2}))


def test_real_kernel_refuses_a_cpu_the_host_did_not_give(machine_agent: GuestMachine) -> None:
    vm = machine_agent
    agent = vm.kernel.agent
    assert agent is not None
    agent.online_retries = 3
    with pytest.raises(ap.AgentError) as info:
        vm.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2, "cpu_only": True})
    assert info.value.code is ap.ErrorCode.ETIMEDOUT
    with pytest.raises(ap.AgentError) as info:
        vm.call(ap.Method.READ_FILE, {"path": "/sys/devices/system/cpu/cpu1/online"})
    assert info.value.code is ap.ErrorCode.ENOENT
    vm.call(ap.Method.CREATE_CONTAINER, {"container_id": "r", "cmd": []})
    out = vm.call(
        ap.Method.EXEC_PROCESS,
        {"container_id": "r", "cmd": ["sh", "-c", "echo 1 > /sys/devices/system/cpu/cpu1/online"]},
    )
    assert out == {
        "exit_code": 2,
        "stdout": "",
        "stderr": "sh: 1: cannot create /sys/devices/system/cpu/cpu1/online:"
        " Directory nonexistent\n",
    }
    assert vm.call(ap.Method.GUEST_DETAILS)["online"] == "0"


def test_real_kernel_online_offline_mode_lets_guest_root_online(
    guest_machine: Callable[..., GuestMachine],
) -> None:
    vm = guest_machine(cpus=4, maxcpus=4, mode="online-offline", agent=True)
    assert vm.call(ap.Method.GUEST_DETAILS)["online"] == "0-3"
    vm.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    line = "echo 0 > /sys/devices/system/cpu/cpu3/online; cat /sys/devices/system/cpu/online"
    out = vm.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["sh", "-c", line]})
    assert out == {"exit_code": 0, "stdout": "0-2\n", "stderr": ""}
    # the guest brings it back on its own: nothing on the host had to agree
    assert vm.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 4, "cpu_only": True}) == {
        "online": [0, 1, 2, 3]
    }


def test_real_kernel_online_offline_mode_offline_cpus_then_guest_root_onlines_again(
    guest_machine: Callable[..., GuestMachine],
) -> None:
    """docs/contract.md §9: shrinking this mode really offlines vCPUs in the guest, but their
    threads stay in the VMM (density cost) and a guest root can bring them back
    (security cost): the host does not get to say no."""
    vm = guest_machine(cpus=4, maxcpus=4, mode="online-offline", agent=True)
    vm.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    assert vm.call(ap.Method.OFFLINE_CPUS, {"nb_cpus": 2}) == {"online": [0, 1]}
    assert vm.call(ap.Method.GUEST_DETAILS)["online"] == "0-1"
    cg = vm.call(ap.Method.STATS_CONTAINER, {"container_id": "c"})
    assert cg["cpuset_effective"] == "0-1"
    vcpus = sorted(t.name for t in threading.enumerate() if t.name.startswith("vcpu"))
    assert vcpus == ["vcpu0", "vcpu1", "vcpu2", "vcpu3"]
    line = "echo 1 > /sys/devices/system/cpu/cpu3/online; cat /sys/devices/system/cpu/online"
    out = vm.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["sh", "-c", line]})
    assert out == {"exit_code": 0, "stdout": "0-1,3\n", "stderr": ""}


def test_real_kernel_exec_onlines_a_hot_added_cpu_from_a_task(machine_agent: GuestMachine) -> None:
    """``echo 1 > cpuN/online`` run as a task: the store happens on a vCPU thread."""
    vm = machine_agent
    vm.machine.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
    assert vm.ost() == (1, 0)
    vm.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    line = "echo 1 > /sys/devices/system/cpu/cpu3/online; cat /sys/devices/system/cpu/online"
    out = vm.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["sh", "-c", line]})
    assert out == {"exit_code": 0, "stdout": "0,3\n", "stderr": ""}


# ------------------------------------------------------------------ Kata's historical bugs


def nproc(env: Env, cid: str) -> str:
    return str(env.call(ap.Method.EXEC_PROCESS, {"container_id": cid, "cmd": ["nproc"]})["stdout"])


def test_cpuset_updated_twice_keeps_nproc_right(env: Env) -> None:
    """Kata agent#257: a second cpuset update left ``nproc`` wrong."""
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    for cpus, expect in (("0", "1\n"), ("0-1", "2\n"), ("1", "1\n"), ("", "2\n")):
        env.call(
            ap.Method.UPDATE_CONTAINER, {"container_id": "c", "resources": {"cpuset_cpus": cpus}}
        )
        assert nproc(env, "c") == expect, cpus


def test_failed_cpuset_update_does_not_block_later_updates(env: Env) -> None:
    """Kata agent#256: one failed ``--cpuset-cpus`` update broke every later vCPU update."""
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": [], "cpuset_cpus": "0"})
    err = env.error(
        ap.Method.UPDATE_CONTAINER, {"container_id": "c", "resources": {"cpuset_cpus": "0-63"}}
    )
    assert err.code is ap.ErrorCode.EINVAL
    env.kernel.hot_add(2)
    assert env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3})["online"] == [0, 1, 2]
    assert nproc(env, "c") == "3\n"


def test_cpuset_naming_an_offline_cpu_is_accepted_and_falls_back() -> None:
    """Kata runtime#1093 (v1 refused ``--cpuset-cpus=1`` on a 1-vCPU VM): v2 semantics."""
    e = Env(FakeKernel(possible=4, online=1, enabled=1))
    try:
        e.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": [], "cpuset_cpus": "1"})
        stats = e.call(ap.Method.STATS_CONTAINER, {"container_id": "c"})
        assert stats["cpuset_effective"] == "0"  # nothing asked is online: the parent's set
        assert nproc(e, "c") == "1\n"
        e.kernel.hot_add(1)
        assert e.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2})["online"] == [0, 1]
        # OnlineCPUMem refreshed the cpuset to the online CPUs, as Kata does
        assert e.call(ap.Method.STATS_CONTAINER, {"container_id": "c"})["cpuset_effective"] == (
            "0-1"
        )
    finally:
        e.close()


def test_cpu_onlined_by_someone_else_is_not_written_again(env: Env) -> None:
    """Kata #1880/#2130: a guest that auto-onlines raced the old agent into failing."""
    env.kernel.hot_add(2)
    env.kernel.vfs.write("/sys/devices/system/cpu/cpu2/online", "1")  # a udev rule did it
    writes = list(env.kernel.online_writes)
    assert env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3})["online"] == [0, 1, 2]
    assert env.kernel.online_writes == writes


# ------------------------------------------------------------------ bad input
# Regression tests for faults found by feeding the agent what a careless or hostile
# client would (QA, formerly tests/e2e/test_qa_bad_input.py).


@pytest.fixture
def agent_env() -> Iterator[Env]:
    env = Env(FakeKernel(possible=4, online=1, enabled=2), retry_interval=0.01)
    yield env
    env.close()


def test_exec_timeout_too_large_is_refused_and_spawns_nothing(agent_env: Env) -> None:
    """``timeout: 1e999`` (infinity) was an EIO "internal error" *after* the spawn,
    leaving the process running unwaited in the container. Now ``1e999`` is not strict
    JSON (docs/agent-protocol.md): the frame is refused before any request exists; a
    finite ``1e300`` is a request the agent refuses with EINVAL."""
    agent_env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    for timeout, id_, code, message in (
        (b"1e999", None, "EPROTO", "frame body is not strict JSON: number 1e999 is out of range"),
        (b"1e300", 7, "EINVAL", "'timeout' must be at most"),
    ):
        body = (
            b'{"id": 7, "method": "ExecProcess", "params": {"container_id": "c", '
            b'"cmd": ["sleep", "30"], "timeout": ' + timeout + b"}}"
        )
        reply = agent_env.raw(struct.pack(">I", len(body)) + body)
        assert reply["id"] == id_ and reply["error"]["code"] == code, reply
        assert message in reply["error"]["message"]
        assert agent_env.kernel.sched.tasks() == []
    out = agent_env.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["true"]})
    assert out["exit_code"] == 0  # and the agent keeps serving


def test_online_more_cpus_than_exist_fails_at_once(agent_env: Env) -> None:
    """It used to retry 100 times (5 s with Kata's interval) for a request that can never
    succeed, onlining what it could on the way, and then answer ETIMEDOUT."""
    err = agent_env.error(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 10**30})
    assert err.code is ap.ErrorCode.EINVAL and "exceeds the 4 possible CPUs" in err.message
    assert agent_env.kernel.online_writes == []  # refused before touching any CPU
    assert agent_env.call(ap.Method.GUEST_DETAILS)["online"] == "0"
    assert agent_env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2})["online"] == [0, 1]
