"""cpuplug: ACPI-based vCPU hotplug for arm64 container sandboxes.

Three parties live here and meet only at narrow seams (docs/contract.md §0):
``cpuplug.vmm`` (QEMU's role), ``cpuplug.guest`` (Linux's role) and
``cpuplug.runtime`` (Kata's role). ``cpuplug.acpi`` is the contract the VMM
writes and the guest reads; ``cpuplug.hw`` is the hardware interface the VMM
hands the guest; ``cpuplug.agent_protocol`` is the wire format between the
runtime and the guest agent.
"""

__version__ = "0.1.0"
