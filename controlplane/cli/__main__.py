"""`python -m controlplane.cli`: the same as the `clusterlink` command."""

import sys

from controlplane.cli.main import main

sys.exit(main())
