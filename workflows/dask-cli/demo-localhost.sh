#!/usr/bin/env bash
# The multi-host recipe on one machine: a scheduler and two workers on 127.0.0.1, then the cohort.
#
#   workflows/dask-cli/demo-localhost.sh COHORT OUT [extra wsi-nuc batch flags...]
#
# On a real cluster run scheduler.sh on one host, worker-cpu.sh / worker-gpu.sh on the others, and
# batch.sh wherever the outputs should be written.
set -uo pipefail
cohort="${1:?usage: demo-localhost.sh COHORT OUT [flags...]}"
out="${2:?out}"
shift 2
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -d)
# workers without Dask's MALLOC_TRIM_THRESHOLD_ (1.9x the network time per tile with it; see wsi-nuc-dask.yaml)
export DASK_CONFIG="${DASK_CONFIG:-$(cd "$(dirname "$0")" && pwd)/wsi-nuc-dask.yaml}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT INT TERM
dask scheduler --host 127.0.0.1 --port "$port" --no-dashboard >"$log/scheduler.log" 2>&1 &
pids+=($!)
for i in 0 1; do
  OMP_NUM_THREADS=1 dask worker "tcp://127.0.0.1:$port" --host 127.0.0.1 --nthreads 1 --no-dashboard \
    --name "w$i" >"$log/worker$i.log" 2>&1 &
  pids+=($!)
done
python - "$port" <<'PY'
import sys
from distributed import Client
with Client(f"tcp://127.0.0.1:{sys.argv[1]}", timeout="60s") as c:
    c.wait_for_workers(2, timeout=120)
PY
wsi-nuc batch "$cohort" --out "$out" --scheduler "tcp://127.0.0.1:$port" "$@"
rc=$?
echo "scheduler and worker logs: $log" >&2
exit $rc
