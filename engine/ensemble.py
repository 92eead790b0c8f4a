"""The average of several networks' outputs, predicted in one kernel call."""
from __future__ import annotations

import numpy as np

from .errors import EngineError
from .kernels.serving import ensemble_forward, no_half
from .network import Snapshot, Workspace, pack_buffer, unpack_buffer

_ARRAYS = ("shifts", "folded", "folded_half", "folded_offsets", "served", "table_offsets", "out_scales", "out_shifts")


class Ensemble:
    """An immutable average of k Snapshots (members of one population, so one task,
    input size and dtype; their layer sizes may differ).

    Their serving weights (Snapshot.folded, laid out by Snapshot.served) are laid end to
    end so that `ensemble_forward` walks all k members in one call: the mean of their
    softmax rows / sigmoid probabilities / values.
    """

    def __init__(self, snapshots, version=0, meta=None):
        if not snapshots:
            raise EngineError("an ensemble needs at least one member")
        first = snapshots[0]
        for s in snapshots[1:]:
            if (s.task, s.n_outputs, s.input_dim, s.dtype) != (first.task, first.n_outputs, first.input_dim, first.dtype):
                raise EngineError("ensemble members must share task, outputs, input size and dtype")
        self.version = version
        self.meta = dict(meta or {})
        self.task, self.n_outputs, self.input_dim = first.task, first.n_outputs, first.input_dim
        self.dtype, self.head = first.dtype, first.head
        self.k = len(snapshots)
        self.folded = np.concatenate([s.folded for s in snapshots])
        # Half weights only when every member has them: one kernel call serves all k.
        halves = [s.folded_half for s in snapshots]
        self.folded_half = np.concatenate(halves) if all(h.shape[0] > 0 for h in halves) else no_half()
        self.folded_offsets = np.cumsum([0] + [s.folded.size for s in snapshots]).astype(np.int64)
        self.served = np.ascontiguousarray(np.concatenate([s.served for s in snapshots]))
        self.table_offsets = np.cumsum([0] + [s.served.shape[0] for s in snapshots]).astype(np.int64)
        self.shifts = np.ascontiguousarray(np.stack([s.shift for s in snapshots]))
        self.out_scales = np.ascontiguousarray(np.stack([s.out_scale for s in snapshots]))
        self.out_shifts = np.ascontiguousarray(np.stack([s.out_shift for s in snapshots]))
        self.units_per_row = max(s.units_per_row for s in snapshots)

    # -- one buffer (shared memory, followers) --------------------------------------------
    def to_bytes(self):
        """The ensemble as one buffer in the snapshot format (kind "ensemble")."""
        return pack_buffer({name: getattr(self, name) for name in _ARRAYS}, {
            "kind": "ensemble", "version": int(self.version), "meta": self.meta, "dtype": self.dtype.name,
            "task": self.task, "n_outputs": int(self.n_outputs), "input_dim": int(self.input_dim),
            "head": int(self.head), "k": self.k, "units_per_row": int(self.units_per_row)})

    @classmethod
    def _from_parts(cls, meta, arrays):
        ens = cls.__new__(cls)
        ens.folded_half = no_half()       # absent from buffers made before half serving
        for name in _ARRAYS:
            if name != "folded_half" or name in arrays:
                setattr(ens, name, arrays[name])
        ens.version, ens.meta = meta["version"], meta["meta"]
        ens.dtype = np.dtype(meta["dtype"])
        ens.task, ens.n_outputs, ens.input_dim = meta["task"], meta["n_outputs"], meta["input_dim"]
        ens.head, ens.k, ens.units_per_row = meta["head"], meta["k"], meta["units_per_row"]
        return ens

    def new_workspace(self):
        return _EnsembleWorkspace(self.units_per_row, self.n_outputs, self.dtype)

    def predict_into(self, X, out, workspace):
        """Mean head outputs for X (m, n0) into out (m, K); X checked by the caller."""
        m = X.shape[0]
        buf = workspace.ensure(m)
        ensemble_forward(X, self.shifts, self.folded, self.folded_half, self.folded_offsets, self.served,
                         self.table_offsets, self.head, self.out_scales, self.out_shifts, buf, workspace.cap,
                         workspace.member_out[:m], out)
        return out


class _EnsembleWorkspace(Workspace):
    """A Workspace plus one member's (cap, K) outputs."""

    def __init__(self, units_per_row, n_outputs, dtype):
        super().__init__(units_per_row, dtype)
        self.n_outputs = n_outputs
        self.member_out = np.empty((0, n_outputs), dtype=dtype)

    def ensure(self, m):
        buf = super().ensure(m)
        if self.member_out.shape[0] < self.cap:
            self.member_out = np.empty((self.cap, self.n_outputs), dtype=self.dtype)
        return buf


def snapshot_from_buffer(buf):
    """A Snapshot or an Ensemble, whichever `buf` holds, its arrays views of `buf`.
    Raises ValueError if it is not a whole snapshot of a format this engine reads."""
    meta, arrays = unpack_buffer(buf)
    kind = meta.get("kind", "model")
    if kind == "ensemble":
        return Ensemble._from_parts(meta, arrays)
    if kind == "model":
        return Snapshot._from_parts(meta, arrays)
    raise ValueError(f"snapshot kind {kind!r} is not one this engine reads")
