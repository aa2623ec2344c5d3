"""The guest (Linux's role): a kernel model that hotplugs CPUs as Linux 6.11 does, and the agent."""
