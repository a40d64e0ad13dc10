"""The `clusterlink` command-line interface."""
