"""Where the processes of one daemon meet: a directory on a memory file system.

It holds the resolved configuration every child starts from, the log positions ingest
and the trainer share, the published snapshots, each child's control socket (ipc) and
the file each child writes once it is serving (its pid and the addresses it bound).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

from learnd.daemon.config import Config
from learnd.daemon.serving.snapshots import default_directory
from learnd.engine.state import write_atomic


class RunDir:
    def __init__(self, path):
        self.path = path

    @classmethod
    def for_state_dir(cls, state_dir):
        return cls(default_directory(state_dir))

    def create(self):
        """A fresh, empty run dir: what a killed daemon left (its snapshots, positions,
        and without the write-ahead log its queue, which is no durable state) goes."""
        self.remove()
        os.makedirs(self.path, mode=0o700)
        return self

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)

    @property
    def snapshots(self):
        return os.path.join(self.path, "snapshots")

    @property
    def positions(self):
        return os.path.join(self.path, "positions")

    @property
    def queue(self):
        """The log's directory when the daemon runs without a write-ahead log (--no-wal):
        the same records on a memory file system, never fsynced."""
        return os.path.join(self.path, "queue")

    def control(self, role):
        return f"ipc://{os.path.join(self.path, role + '.sock')}"

    @property
    def predict_backend(self):
        """With several predict workers, each connects here to the supervisor's proxy."""
        return f"ipc://{os.path.join(self.path, 'predict.sock')}"

    @property
    def id_forward(self):
        """Predict workers push (ids, inputs) here for ingest's delayed-label store."""
        return f"ipc://{os.path.join(self.path, 'ids.sock')}"

    def write_config(self, config):
        data = dataclasses.asdict(config)
        if isinstance(data["model"].get("hidden"), tuple):
            data["model"]["hidden"] = list(data["model"]["hidden"])
        write_atomic(os.path.join(self.path, "config.json"), json.dumps(data).encode())

    def read_config(self):
        with open(os.path.join(self.path, "config.json")) as f:
            data = json.load(f)
        model = data.pop("model")
        if isinstance(model.get("hidden"), list):
            model["hidden"] = tuple(model["hidden"])
        return Config(**data, model=model).validate()

    def info_path(self, role):
        return os.path.join(self.path, role + ".json")

    def write_info(self, role, bound):
        write_atomic(self.info_path(role), json.dumps({"pid": os.getpid(), "bound": bound}).encode())

    def write_startup_error(self, role, message, exit_code):
        """Why this child could not start, for the supervisor to report as its own."""
        write_atomic(self.info_path(role), json.dumps({"pid": os.getpid(), "error": message,
                                                       "exit_code": exit_code}).encode())

    def read_info(self, role):
        try:
            with open(self.info_path(role)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
