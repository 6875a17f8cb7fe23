#!/usr/bin/env bash
# GPU workers on this host: one worker process per GPU, each advertising the resource GPU=1.
#
#   workflows/dask-cli/worker-gpu.sh tcp://SCHEDULER_HOST:8786 [N_GPUS]
#
# With `wsi-nuc batch --device cuda`, every inference task asks for GPU=1, so only these workers run
# them (one at a time per process) and CPU-only workers of the same cluster stay idle for wsi-nuc.
# Tip: the watershed/measurement part of a task runs on the CPU; to keep a GPU busier, start two
# processes per GPU (same CUDA_VISIBLE_DEVICES, each --resources GPU=1): two model copies, overlapped.
set -euo pipefail
sched="${1:?usage: worker-gpu.sh tcp://host:8786 [N_GPUS]}"
n="${2:-$(nvidia-smi -L | wc -l)}"
# workers without Dask's MALLOC_TRIM_THRESHOLD_ (1.9x the network time per tile with it; see wsi-nuc-dask.yaml)
export DASK_CONFIG="${DASK_CONFIG:-$(cd "$(dirname "$0")" && pwd)/wsi-nuc-dask.yaml}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for ((i = 0; i < n; i++)); do
  CUDA_VISIBLE_DEVICES=$i OMP_NUM_THREADS=4 \
    dask worker "$sched" --nworkers 1 --nthreads 1 --resources GPU=1 --name "gpu$i-$(hostname)" &
  pids+=($!)
done
wait
