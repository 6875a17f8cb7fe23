#!/usr/bin/env bash
# Start the Dask scheduler (one per cluster), on a host every worker and the driver can reach.
#
#   workflows/dask-cli/scheduler.sh [PORT]        # default 8786; dashboard on :8787 (needs bokeh)
#
# The scheduler has no authentication: run it on a trusted network (or configure Dask TLS).
set -euo pipefail
exec dask scheduler --port "${1:-8786}" --dashboard-address :8787
