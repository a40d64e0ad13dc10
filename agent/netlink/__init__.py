"""Node plumbing with pyroute2. The only place in the agent that imports pyroute2."""
