"""The datapath's one exception type: every failure a caller can act on, stated so an operator can."""


class DatapathError(RuntimeError):
    """The kernel datapath cannot be set up, used or torn down; the message says why and what to do."""
