"""The error a `clusterlink` command raises for a problem the user can fix (printed as one line, exit 1)."""


class CommandError(Exception):
    """A user-facing command failure; the message is printed as `clusterlink: error: <message>`."""
