#!/usr/bin/env bash
# A multi-node Ray cluster on this machine, laid out like the dev RayService (k8s/overlays/dev):
# a head and one node per worker group of the config's `cluster.groups` (configs/cluster.yaml),
# each its own raylet (`ray start`) with that group's CPUs, resources and labels, all listening
# on 127.0.0.1 only (token auth off, as for every local cluster of affectstream).
#
#   k8s/local-cluster.sh up [--config cluster] [--port 6392]   # start; prints RAY_ADDRESS
#   RAY_ADDRESS=127.0.0.1:6392 affectstream serve --config cluster
#   curl -s localhost:8000/v1/cluster                         # nodes, and what runs where
#   k8s/local-cluster.sh kill-node ingest-1                     # SIGKILL one worker node
#   k8s/local-cluster.sh status | down
#
# PYTHON selects the interpreter (default: python3 on PATH with affectstream installed); the
# nodes' workers run it too. Port 6379 (Redis) is refused. Docs: docs/scaling.md.
set -euo pipefail
exec "${PYTHON:-python3}" -m affectstream.pipeline.runtime.local_cluster "$@"
