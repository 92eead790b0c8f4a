"""What the benchmark scripts do around their measurements: run independent jobs in
parallel processes, and print and save the figures of a run."""
from __future__ import annotations

import json


def run_jobs(fn, jobs, processes=1):
    """[fn(job) for job in jobs], in order, over `processes` forked processes (each job
    its own task, so long and short ones balance)."""
    if processes <= 1:
        return [fn(job) for job in jobs]
    import multiprocessing as mp
    with mp.get_context("fork").Pool(processes) as pool:
        return pool.map(fn, jobs, chunksize=1)


def report(figures, print_table, json_path=None):
    """Print the figures with `print_table`, write them as JSON to `json_path` if given;
    returns them."""
    print_table(figures)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=2)
    return figures
