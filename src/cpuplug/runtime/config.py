"""The runtime's configuration: a TOML file with Kata's key names (docs/contract.md §8).

Keys are read either at the top level of the file or from the sections a Kata
``configuration-qemu.toml`` puts them in (``[hypervisor.qemu]`` for the sizing
keys, ``[runtime]`` for ``static_sandbox_resource_mgmt``), so a real Kata config
works unchanged.  Unknown keys inside those Kata sections are ignored (a Kata
file has dozens); an unknown *top-level* key is an error, because there it is
almost certainly a typo.

Normalisation follows Kata's ``defaultVCPUs``/``defaultMaxVCPUs`` (Kata
``src/runtime/pkg/katautils/config.go``): ``default_vcpus`` 0 → 1, < 0 or above the
maximum → the maximum; ``default_maxvcpus`` 0 → host CPUs (docs/contract.md §8),
capped at the machine's 512.
Command-line flags override the file (:meth:`RuntimeConfig.with_overrides`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from cpuplug.acpi.limits import MAX_CPUS
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import CpuplugError, UsageError
from cpuplug.runtime.sizing import exact

HOTPLUG_MODES: tuple[str, ...] = tuple(m.value for m in HotplugMode)

_KEYS = {
    "default_vcpus",
    "default_maxvcpus",
    "static_sandbox_resource_mgmt",
    "hotplug_mode",
    "remove_timeout",
    "hypervisor",
    "start_timeout",
}
_QEMU_KEYS = {"path": "qemu_path", "kernel": "kernel", "initrd": "initrd",
              "default_memory": "default_memory", "arch": "arch",
              "extra_vcpu_slots": "extra_vcpu_slots", "firmware": "firmware"}  # fmt: skip
"""Keys read only from ``[hypervisor.qemu]`` (Kata's names; ``arch`` and
``extra_vcpu_slots`` are cpuplug's), with the field each sets."""
HYPERVISORS = ("builtin", "qemu")
ARCHES = ("x86_64", "aarch64")
MAX_REMOVE_TIMEOUT = 3600.0
"""Longest wait for a guest to release a vCPU: an hour is already a hung guest, and a
bigger value (``1e308``) would overflow the deadline arithmetic or wait forever."""
_KATA_SECTIONS = (("hypervisor", "qemu"), ("hypervisor", "cpuplug"), ("runtime",))
_SECTION_ROOTS = frozenset(path[0] for path in _KATA_SECTIONS)


class ConfigError(UsageError):
    """The configuration file is unreadable or holds a bad value."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Resolved settings (after defaults, file and flags)."""

    default_vcpus: Fraction = Fraction(1)
    default_maxvcpus: int = 0
    static_sandbox_resource_mgmt: bool = False
    hotplug_mode: HotplugMode = HotplugMode.ACPI
    remove_timeout: float = 10.0
    start_timeout: float = 60.0
    """Longest wait for a new VM's agent to answer (a TCG boot on a loaded host is slow)."""
    hypervisor: str = "builtin"
    qemu_path: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    firmware: str | None = None
    """UEFI firmware for ``-bios`` (Kata's key); the image's own when unset (aarch64:
    Debian's QEMU_EFI.fd, which arm64 ACPI and so vCPU hotplug need)."""
    default_memory: int = 512
    """Guest RAM in MiB (QEMU backend)."""
    arch: str | None = None
    """Guest architecture for the QEMU backend (default: the host's)."""
    extra_vcpu_slots: int | None = None
    """Possible vCPUs QEMU gets beyond ``maxcpus``, never plugged: under TCG each is one
    more vCPU plug in the VM's life (docs/runtime.md).  None: the backend's default."""

    def vm_options(self) -> dict[str, Any]:
        """The hypervisor backend's options from this config (runtime.hypervisor.VmSpec)."""
        opts: dict[str, Any] = {"memory": str(self.default_memory)}
        for key, value in (("qemu", self.qemu_path), ("kernel", self.kernel),
                           ("initrd", self.initrd), ("arch", self.arch),
                           ("firmware", self.firmware)):  # fmt: skip
            if value is not None:
                opts[key] = value
        if self.extra_vcpu_slots is not None:
            opts["extra_vcpu_slots"] = str(self.extra_vcpu_slots)
        return opts

    def max_vcpus(self, host_cpus: int | None = None) -> int:
        """The effective ``maxcpus``: 0 means the host's CPU count (docs/contract.md §8); max 512.

        Unlike Kata we do not lower an explicit value to the host CPU count:
        docs/contract.md §8 only maps 0, and a sandbox may sensibly have more vCPU slots
        than the host has cores (they cost no thread until plugged).
        """
        if self.default_maxvcpus > 0:
            return min(self.default_maxvcpus, MAX_CPUS)
        host = host_cpus if host_cpus is not None else (os.cpu_count() or 1)
        return min(max(host, 1), MAX_CPUS)

    def effective_default_vcpus(self, max_vcpus: int) -> Fraction:
        """``default_vcpus`` after Kata's rules: 0 → 1, < 0 → all, never above max."""
        v = self.default_vcpus
        if v == 0:
            v = Fraction(1)
        if v < 0 or v > max_vcpus:
            v = Fraction(max_vcpus)
        return v

    def with_overrides(self, **flags: Any) -> RuntimeConfig:
        """A copy with every non-None flag applied (flags win over the file)."""
        given = {k: v for k, v in flags.items() if v is not None}
        unknown = set(given) - _KEYS - set(_QEMU_KEYS.values())
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return _validated(replace(self, **given))


def _validated(cfg: RuntimeConfig) -> RuntimeConfig:
    if cfg.hotplug_mode not in HOTPLUG_MODES:
        raise ConfigError(
            f"hotplug_mode must be one of {', '.join(HOTPLUG_MODES)}, got {cfg.hotplug_mode!r}"
        )
    cfg = replace(cfg, hotplug_mode=HotplugMode(cfg.hotplug_mode))  # a flag gives a str
    if cfg.hypervisor not in HYPERVISORS:
        raise ConfigError(
            f"hypervisor must be one of {', '.join(HYPERVISORS)}, got {cfg.hypervisor!r}"
        )
    if cfg.arch is not None and cfg.arch not in ARCHES:
        raise ConfigError(f"arch must be one of {', '.join(ARCHES)}, got {cfg.arch!r}")
    if not 64 <= cfg.default_memory <= 1 << 20:
        raise ConfigError(f"default_memory must be 64..1048576 MiB, got {cfg.default_memory}")
    if cfg.extra_vcpu_slots is not None and not 0 <= cfg.extra_vcpu_slots <= MAX_CPUS:
        raise ConfigError(
            f"extra_vcpu_slots must be in 0..{MAX_CPUS}, got {cfg.extra_vcpu_slots}"
        )
    if not 0 <= cfg.default_maxvcpus <= MAX_CPUS:
        raise ConfigError(f"default_maxvcpus must be in 0..{MAX_CPUS}, got {cfg.default_maxvcpus}")
    if not 0 < cfg.start_timeout <= MAX_REMOVE_TIMEOUT:
        raise ConfigError(
            f"start_timeout must be > 0 and <= {MAX_REMOVE_TIMEOUT:g} seconds, "
            f"got {cfg.start_timeout:g}"
        )
    if not 0 < cfg.remove_timeout <= MAX_REMOVE_TIMEOUT:
        raise ConfigError(
            f"remove_timeout must be > 0 and <= {MAX_REMOVE_TIMEOUT:g} seconds, "
            f"got {cfg.remove_timeout:g}"
        )
    return cfg


def default_config_path() -> Path:
    """``$CPUPLUG_CONFIG``, else ``/etc/cpuplug/config.toml`` for root, else XDG config."""
    env = os.environ.get("CPUPLUG_CONFIG")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/etc/cpuplug/config.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cpuplug" / "config.toml"


def parse_config(text: str, source: str = "<config>") -> RuntimeConfig:
    """Parse TOML text into a :class:`RuntimeConfig` (defaults for missing keys)."""
    # Imported here: only ``run`` reads a config file, and every other command imports
    # this module (for RuntimeConfig) without one to parse (issue 8 §4).
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:
        # tomllib descends recursively into arrays and inline tables: `a=` followed by
        # thousands of `[` exhausts the interpreter's stack (D4). No real config nests
        # more than a few levels, so the file is at fault, not the environment.
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
    values: dict[str, Any] = {}
    for key, val in doc.items():
        if isinstance(val, dict):
            continue  # sections are read (and type-checked) below
        if key not in _KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}")
        values[key] = val
    for path in _KATA_SECTIONS:
        section: Any = doc
        for depth, part in enumerate(path, 1):
            section = section.get(part) if isinstance(section, dict) else None
            if depth == 1 and part in _KEYS and isinstance(section, str):
                section = None  # `hypervisor = "qemu"`: the key, not Kata's table
            if section is not None and not isinstance(section, dict):
                # A Kata section that is not a table would silently drop its keys.
                raise ConfigError(
                    f"{source}: [{'.'.join(path[:depth])}] must be a table, got {section!r}"
                )
        if isinstance(section, dict):
            for key in _KEYS & section.keys():
                values.setdefault(key, section[key])
            if path == ("hypervisor", "qemu"):
                for key in _QEMU_KEYS.keys() & section.keys():
                    values[_QEMU_KEYS[key]] = section[key]
    return _from_values(values, source)


def _from_values(values: dict[str, Any], source: str) -> RuntimeConfig:
    cfg = RuntimeConfig()
    kw: dict[str, Any] = {}
    for key, val in values.items():
        if key == "default_vcpus":
            if isinstance(val, bool) or not isinstance(val, int | float):
                raise ConfigError(f"{source}: default_vcpus must be a number, got {val!r}")
            if not math.isfinite(val):
                raise ConfigError(f"{source}: default_vcpus must be a finite number, got {val!r}")
            kw[key] = exact(val)
        elif key == "default_maxvcpus":
            if isinstance(val, bool) or not isinstance(val, int):
                raise ConfigError(f"{source}: default_maxvcpus must be an integer, got {val!r}")
            kw[key] = val
        elif key == "static_sandbox_resource_mgmt":
            if not isinstance(val, bool):
                raise ConfigError(f"{source}: {key} must be true or false, got {val!r}")
            kw[key] = val
        elif key == "hotplug_mode":
            if str(val) not in HOTPLUG_MODES:
                raise ConfigError(
                    f"{source}: hotplug_mode must be one of {', '.join(HOTPLUG_MODES)}, "
                    f"got {val!r}"
                )
            kw[key] = HotplugMode(str(val))
        elif key in ("remove_timeout", "start_timeout"):
            if isinstance(val, bool) or not isinstance(val, int | float):
                raise ConfigError(f"{source}: {key} must be seconds, got {val!r}")
            kw[key] = float(val)
        elif key == "extra_vcpu_slots":
            if isinstance(val, bool) or not isinstance(val, int):
                raise ConfigError(f"{source}: extra_vcpu_slots must be an integer, got {val!r}")
            kw[key] = val
        elif key == "default_memory":
            if isinstance(val, bool) or not isinstance(val, int):
                raise ConfigError(f"{source}: default_memory must be MiB (an integer), got {val!r}")
            kw[key] = val
        elif key in ("hypervisor", "qemu_path", "kernel", "initrd", "arch", "firmware"):
            if not isinstance(val, str) or not val:
                raise ConfigError(f"{source}: {key} must be a non-empty string, got {val!r}")
            kw[key] = val
    try:
        return _validated(replace(cfg, **kw))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | None = None) -> RuntimeConfig:
    """Load ``path`` (must exist), or the default path if it exists, else defaults."""
    explicit = path is not None
    p = Path(path) if path is not None else default_config_path()
    # A file that is not text or not a file is the user's mistake in naming it (a usage
    # error, exit 2, D9); only a failure to read a proper file is the environment's.
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise ConfigError(f"config file {p} does not exist") from None
        return RuntimeConfig()
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (TOML must be): byte 0x{exc.object[exc.start]:02x}"
            f" at offset {exc.start}"
        ) from None
    except OSError as exc:
        raise CpuplugError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    return parse_config(text, str(p))
