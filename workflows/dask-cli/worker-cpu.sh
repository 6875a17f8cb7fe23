#!/usr/bin/env bash
# CPU workers on this host: one single-threaded worker process per core (torch gets one thread each).
#
#   workflows/dask-cli/worker-cpu.sh tcp://SCHEDULER_HOST:8786 [N_PROCESSES]
#
# Each process loads the model once and keeps it. Slides and the model folder must be readable at the
# same paths as on the driver (a shared file system); outputs are written by the driver only.
set -euo pipefail
sched="${1:?usage: worker-cpu.sh tcp://host:8786 [N]}"
n="${2:-$(nproc)}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# workers without Dask's MALLOC_TRIM_THRESHOLD_ (1.9x the network time per tile with it; see wsi-nuc-dask.yaml)
export DASK_CONFIG="${DASK_CONFIG:-$(cd "$(dirname "$0")" && pwd)/wsi-nuc-dask.yaml}"
exec dask worker "$sched" --nworkers "$n" --nthreads 1 --name "cpu-$(hostname)" --memory-limit auto
