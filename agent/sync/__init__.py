"""The agent's client of the control plane's snapshot API."""
