"""The runtime (Kata's role): sandboxes, OCI CPU resources -> vCPUs, QMP and agent calls."""
