"""The control-plane process: reconcilers, heartbeats, management and snapshot APIs."""
