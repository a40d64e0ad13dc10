"""`clusterlink-gateway`: the entry point. Without --worker-index it is the supervisor
(`supervisor.Supervisor`), with it one of the workers (`worker.run_worker`); both parse the same
flags (`config`). With --workers 1 there is no supervisor: the process is the worker
(`single.run_single`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from controlplane.api.logsetup import setup_logging

from .config import load_config


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = load_config(args)
    if config.is_worker:
        setup_logging(config.log_level, config.log_format, component=f"gateway[{config.worker_index}]")
        from .worker import run_worker

        return run_worker(config)
    setup_logging(config.log_level, config.log_format, component="gateway")
    if config.workers == 1:
        from .single import run_single
        return run_single(config)
    from .supervisor import Supervisor

    return Supervisor(config, args).run()


if __name__ == "__main__":
    sys.exit(main())
