"""The contract between the control plane and its clients (gateways, agents, the CLI).

Only types, constants, protos and codecs live here: this is the one part of the control plane that
the agent may import.
"""
