"""``ray start`` for a loopback-only node of a multi-node cluster on one machine
(``python -m affectstream.pipeline.runtime.ray_start start ...``; :mod:`.local_cluster`).

Ray binds its processes to 127.0.0.1 only in its single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, :mod:`.ray_net`), and in that mode its CLI refuses to
add a worker node (``ray start --address``: "Multi-node Ray clusters are not supported"). In
cluster mode it accepts the node but rewrites ``127.0.0.1`` — the node's address and the head's —
to the machine's reachable IP, and the raylet, object manager and GCS then listen on every
interface. This entry point runs Ray's own CLI with the two halves it needs: the node processes
it starts inherit single-machine mode (they listen on 127.0.0.1), while the CLI process itself
allows adding a node and keeps 127.0.0.1 as the node's address. Nothing else of Ray changes.
"""

from __future__ import annotations

import os
import sys

from affectstream.pipeline.runtime.ray_net import LOOPBACK_ENV


def main(argv: list[str] | None = None) -> int:
    """Run ``ray <argv>`` as described above; returns the CLI's exit status.

    Raises:
        RuntimeError: this Ray has no single-machine switch or IP resolver where expected
            (a Ray version this was not written for).
    """
    os.environ[LOOPBACK_ENV] = "0"  # what the raylet, agents and workers started from here see
    from ray._private import ray_constants, services

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER") or not hasattr(
            services, "get_node_ip_address"):
        raise RuntimeError("this Ray has no ENABLE_RAY_CLUSTER / get_node_ip_address: "
                           "affectstream's loopback ray start does not support it")
    ray_constants.ENABLE_RAY_CLUSTER = True  # the CLI may add a worker node ...

    def loopback_ip(address: str | None = None) -> str:  # ... and keeps 127.0.0.1 as is
        return "127.0.0.1"

    services.get_node_ip_address = loopback_ip
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    try:
        ray_main()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
