"""Data-parallel training on MPI: `mpiexec -n K learnd serve --data-parallel`.

Each rank is a whole single-process daemon with its own ingest socket, write-ahead log,
state dir and producers; what the ranks share is the model.  Three things here:

- where rank r listens (`for_rank`): every configured TCP port plus 10 r (rank 0 keeps
  them), its state in STATE_DIR/rank-R;
- the rounds (`Group.agree`): once per pass of its loop every rank's trainer says
  whether it is ready to step, has rows, is stopping, or wants a checkpoint; one
  Allreduce of those four numbers, and every rank does the same thing;
- the checkpoint to resume from (`Group.agree_on_checkpoint`): the newest step every
  rank holds a checkpoint of, so that the ranks restart with equal models.

The step itself is the engine's (engine.collective): mpi4py is imported here only, and
only under --data-parallel, so learnd installs and runs without MPI.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from learnd.daemon.errors import ConfigError, StartupError
from learnd.daemon.training.checkpoints import decode

log = logging.getLogger("learnd.parallel")

PORT_STRIDE = 10            # rank r listens on every configured port + 10 r
EXIT_CONFIG = 2
ROUND_POLL_S = 0.0002       # how often a rank waiting for the others' round looks (it yields the CPU)
DISCARDED_SUFFIX = ".discarded"
_TCP = re.compile(r"^(tcp://.*):(\d+)$")


def for_rank(config, rank):
    """The configuration of rank `rank`: TCP ports + 10 rank (port 0, the OS's choice,
    stays 0), state in STATE_DIR/rank-R.  Other transports (ipc://) are the operator's
    to make distinct per rank."""
    def shifted(address):
        match = _TCP.match(address)
        if match is None or int(match.group(2)) == 0:
            return address
        return f"{match.group(1)}:{int(match.group(2)) + PORT_STRIDE * rank}"

    host, _, port = config.metrics.rpartition(":")
    metrics = config.metrics if int(port) == 0 else f"{host}:{int(port) + PORT_STRIDE * rank}"
    return dataclasses.replace(
        config, ingest=shifted(config.ingest), predict=shifted(config.predict), control=shifted(config.control),
        snapshots=shifted(config.snapshots), metrics=metrics,
        state_dir=os.path.join(config.state_dir, f"rank-{rank}"), model=dict(config.model))


def check_config(config):
    """Refuse what a data-parallel group cannot do (ConfigError, exit 2), and turn replay
    off (why: docs/scaling.md)."""
    missing = [k for k in ("input_dim", "task", "n_outputs") if config.model.get(k) is None]
    if missing:
        raise ConfigError(f"--data-parallel needs the model's {', '.join(missing)} in [model] (or --set): "
                          "every rank builds the same model before its first step, and a rank may have no "
                          "batch to infer them from")
    if config.searching:
        raise ConfigError(f"--data-parallel trains one model; search_members = {config.search_members} "
                          "(a population) is not supported with it")
    if config.early_stopping_action == "freeze":
        raise ConfigError("early_stopping_action = 'freeze' would stop one rank's steps on its own dev rows; "
                          "under --data-parallel use 'none' or 'serve_best'")
    if config.checkpoint_keep < 2:
        raise ConfigError("--data-parallel needs checkpoint_keep >= 2: the ranks resume from the newest "
                          "step all of them hold, which a kill during the last write may leave one rank without")
    if config.replay_ratio:
        log.info("replay is off under --data-parallel (replay_ratio %d ignored): its steps fill a trainer's "
                 "idle time, and the ranks would all have to be idle at once", config.replay_ratio)
        config.replay_ratio = 0
    return config


class MPICollective:
    """engine.collective's sum over an mpi4py communicator (MPI Allreduce, in place)."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def sum(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)


@dataclass
class Agreed:
    """What every rank does after a round."""

    step: bool          # take a step: each rank with the rows it has (weight 0 without)
    stop: bool          # a rank is stopping: every rank drains its rows, then stops
    checkpoint: bool    # every rank writes a checkpoint after this round's step


class Group:
    """This rank's place in the data-parallel group: rank, size, the engine's collective,
    the rounds and the choice of checkpoint."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.collective = MPICollective(comm, MPI)
        self.rank, self.size = self.collective.rank, self.collective.size
        self._round = np.zeros(4)

    def agree(self, ready, has_rows, stop, checkpoint):
        """One round.  ready: this rank has a full batch, or its oldest row has waited
        batch_linger_ms, or no row has come for batch_linger_ms; has_rows: it has rows
        to step on.  The group steps when some rank has rows and every rank is ready (or
        one is stopping), so an idle rank holds the others back batch_linger_ms at most.

        A nonblocking Allreduce, waited for with short sleeps: a rank that is early to the
        round leaves the CPU to the others (MPI's blocking calls spin)."""
        buf = self._round
        buf[:] = (float(ready), float(has_rows), float(stop), float(checkpoint))
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        while not request.Test():
            time.sleep(ROUND_POLL_S)
        stopping = buf[2] > 0
        return Agreed(step=buf[1] > 0 and (buf[0] == self.size or stopping), stop=stopping,
                      checkpoint=buf[3] > 0)

    def abort(self, code):
        """End every rank of the job with `code` (MPI_Abort): what a rank that cannot go
        on does, since the others would wait for it at their next collective."""
        logging.shutdown()
        self.comm.Abort(code)

    def agree_on_checkpoint(self, store):
        """The path of this rank's checkpoint of the newest step every rank holds one of
        (None: start afresh).  Checkpoints of later steps, which another rank lacks (a
        kill during a write), are renamed aside: their steps will be taken again, by
        every rank, from the log."""
        steps = {}
        for _, path in store.files():
            try:
                with open(path, "rb") as f:
                    steps[int(decode(f.read())["daemon"]["counters"]["batches_trained"])] = path
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("checkpoint %s is unreadable (%s); it is not a candidate", path, exc)
        mine = np.array(sorted(steps), dtype=np.int64)
        longest = np.array([mine.size], dtype=np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, longest, op=self.MPI.MAX)
        padded = np.full(int(longest[0]), -1, dtype=np.int64)
        padded[:mine.size] = mine
        everyone = np.empty((self.size, padded.size), dtype=np.int64)
        self.comm.Allgather(padded, everyone)
        common = set(everyone[0][everyone[0] >= 0].tolist())
        for row in everyone[1:]:
            common &= set(row[row >= 0].tolist())
        chosen = max(common) if common else None
        for step, path in steps.items():
            if chosen is None or step > chosen:
                os.replace(path, path + DISCARDED_SUFFIX)
                log.warning("checkpoint %s (step %d) set aside: not every rank holds that step", path, step)
        log.info("rank %d of %d resumes from %s", self.rank, self.size,
                 f"step {chosen}" if chosen is not None else "the start")
        return steps.get(chosen)


def connect():
    """This process's Group, from MPI's world communicator (mpiexec started it).

    Raises StartupError (exit 2) when mpi4py or an MPI library is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise StartupError(f"--data-parallel needs mpi4py and an MPI library (pip install 'learnd[mpi]'): "
                           f"{exc}", EXIT_CONFIG) from None
    except RuntimeError as exc:   # mpi4py found no MPI library to load
        raise StartupError(f"--data-parallel: MPI cannot start: {exc}", EXIT_CONFIG) from None
    return Group(MPI.COMM_WORLD, MPI)
