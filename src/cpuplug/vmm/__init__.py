"""The VMM (QEMU's role): an arm64 virt-like machine with ACPI vCPU hotplug and QMP."""
