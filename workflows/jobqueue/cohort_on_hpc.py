"""A wsi-nuc cohort on SLURM or PBS: dask-jobqueue turns batch jobs into Dask workers.

NOT runnable in this repository's test environment (no SLURM/PBS, dask-jobqueue not installed): a
documented example to adapt (queue, account, memory, module loads). Install on the cluster with
``pip install dask-jobqueue`` in the same environment as wsi-nuc.

    python workflows/jobqueue/cohort_on_hpc.py slurm cohort.csv /scratch/$USER/wsi-out --jobs 8
    python workflows/jobqueue/cohort_on_hpc.py slurm cohort.csv /scratch/$USER/wsi-out --jobs 4 --gpu
    python workflows/jobqueue/cohort_on_hpc.py pbs   cohort.csv /scratch/$USER/wsi-out --jobs 8

This process is the *driver*: it submits tile tasks, stitches each slide and writes its outputs. Run it
in a small long job of its own (see driver.sbatch / driver.pbs), not on a shared login node. Worker jobs
only read the slides and the model: both must be on a file system the compute nodes see, at the same
paths. Interrupted (walltime, preemption)? Run the same command again: finished slides are skipped and a
half-done slide resumes from its finished tiles.
"""
from __future__ import annotations

import argparse
import os
import sys

from distributed import Client

from wsi_nuc.cohort import run_cohort
from wsi_nuc.errors import InputError
from wsi_nuc.pipeline import RunSettings

# Lines run at the top of every worker job, before `dask worker`: load your site's modules and the
# environment that has wsi-nuc installed.
PROLOGUE = [
    f"source {os.path.join(sys.prefix, 'bin', 'activate')}",
    # workers without Dask's MALLOC_TRIM_THRESHOLD_ (the network took 1.9x its time per tile with it;
    # docs/performance.md, at dcb0609): the Dask config next to the dask-cli scripts, on the shared file system
    f"export DASK_CONFIG={os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'dask-cli', 'wsi-nuc-dask.yaml')}",
]


def make_cluster(system: str, a):
    """A dask-jobqueue cluster whose workers are wsi-nuc workers (one model copy per process)."""
    import dask_jobqueue

    if a.gpu:
        # one worker process per job, owning one GPU and advertising it: inference tasks ask for GPU=1
        processes, cores = 1, a.cores
        worker_args = ["--resources", "GPU=1"]
        prologue = PROLOGUE + [f"export OMP_NUM_THREADS={a.cores}"]
    else:
        # single-threaded worker processes, one per core, one torch thread each
        processes, cores = a.cores, a.cores
        worker_args = []
        prologue = PROLOGUE + ["export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"]
    common = dict(cores=cores, processes=processes, memory=a.memory, walltime=a.walltime, queue=a.queue,
                  account=a.account, worker_extra_args=worker_args, job_script_prologue=prologue,
                  local_directory=os.environ.get("TMPDIR", "/tmp"), log_directory=a.log_directory)
    if system == "slurm":
        directives = ["--gres=gpu:1"] if a.gpu else []
        return dask_jobqueue.SLURMCluster(job_extra_directives=directives, **common)
    if system == "pbs":
        gpus = ":ngpus=1" if a.gpu else ""
        return dask_jobqueue.PBSCluster(resource_spec=f"select=1:ncpus={cores}{gpus}:mem={a.memory}", **common)
    raise SystemExit(f"unknown system {system!r} (slurm or pbs)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("system", choices=("slurm", "pbs"))
    p.add_argument("cohort", help="CSV with a 'path' column, a folder of slides or a quoted glob")
    p.add_argument("out")
    p.add_argument("--jobs", type=int, default=4, help="worker jobs (each --cores cores, or one GPU)")
    p.add_argument("--gpu", action="store_true", help="GPU jobs; inference runs with --device cuda")
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--memory", default="32GB", help="per job")
    p.add_argument("--walltime", default="04:00:00")
    p.add_argument("--queue", help="partition / queue")
    p.add_argument("--account", help="project to charge")
    p.add_argument("--log-directory", default="dask-logs")
    p.add_argument("--adapt", action="store_true", help="scale between 1 and --jobs jobs with the load")
    p.add_argument("--model")
    p.add_argument("--mpp", type=float)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--force", action="store_true")
    a = p.parse_args()

    settings = RunSettings(model=a.model, mpp=a.mpp, tile=a.tile, device="cuda" if a.gpu else "cpu")
    cluster = make_cluster(a.system, a)
    print(cluster.job_script(), file=sys.stderr)  # what each worker job runs
    if a.adapt:
        cluster.adapt(minimum_jobs=1, maximum_jobs=a.jobs)
    else:
        cluster.scale(jobs=a.jobs)
    try:
        with cluster, Client(cluster) as client:       # leaving the block cancels the worker jobs
            client.wait_for_workers(1, timeout=3600)   # the queue may take a while
            result = run_cohort(a.cohort, a.out, settings, client=client, force=a.force)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = result.count("failed")
    print(f"{len(result.rows) - failed}/{len(result.rows)} slides done, {failed} failed -> {result.manifest}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
