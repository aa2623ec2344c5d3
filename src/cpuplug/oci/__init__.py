"""``cpuplug-runc``: an OCI runtime with runc's command line, each container a sandbox VM.

docker 20.10 and containerd 1.6 drive it exactly as they drive runc (through
``containerd-shim-runc-v2``); every container is one cpuplug sandbox (a VM with one
container in it, :class:`cpuplug.runtime.sandbox.Runtime`), and a host process, the
shim (Kata 1.x's ``kata-shim``), stands for the container's process. docs/oci.md.

This package imports the runtime and the shared seams, never the VMM or the guest
(an import-linter contract).
"""
