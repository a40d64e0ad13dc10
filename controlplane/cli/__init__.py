"""The `clusterlink` command-line interface."""

import os as _os

# grpc's C core logs to stderr on its own (certificate loading, connection attempts): a user of the
# CLI gets our one-line errors instead. Set before grpc is imported; a user's own setting wins.
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")
