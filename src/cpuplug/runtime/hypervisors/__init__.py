"""Hypervisor backends: one module per VMM, each exporting ``BACKEND``.

Loaded by name through :func:`cpuplug.runtime.hypervisor.backend`; the
orchestration never imports this package (import-linter contract).
"""
