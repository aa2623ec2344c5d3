"""The agent protocol: the wire format between the runtime and the guest agent.

Shared by both ends and importing neither (SPEC §0); see docs/agent-protocol.md.
"""
