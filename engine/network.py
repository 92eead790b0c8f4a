"""The network's memory: flat parameter, gradient and statistics buffers, the layer
table the kernels read, and growable workspaces for training and inference.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

from .kernels import network as K
from .kernels.serving import fold_weights, no_half, served_forward, serving_layout
from .kernels.activations import ACTIVATIONS
from .kernels.dropout import bits_buffer
from .kernels.losses import HEADS
from .spec import ModelSpec


class Layout:
    """Where every array of a network lives, for one spec and input size.

    `table` is the kernels' int64 layer table (columns in learnd.engine.kernels.network);
    `param_slices`/`stat_slices` map DESIGN's names (W1, b1, gamma1, ...) to
    (offset, shape) in the flat `params`/`stats` buffers.
    """

    def __init__(self, spec: ModelSpec):
        sizes = spec.layer_sizes
        n_layers = len(sizes) - 1
        table = np.full((n_layers, K.N_COLUMNS), -1, dtype=np.int64)
        self.param_slices: dict[str, tuple[int, tuple]] = {}
        self.stat_slices: dict[str, tuple[int, tuple]] = {}
        p = s = f = 0
        slot = sizes[0]                       # units per row; SLOT_INPUT holds n0 of them

        def take_slot(n):
            nonlocal slot
            start = slot
            slot += n
            return start

        for l in range(n_layers):
            n_in, n_out = sizes[l], sizes[l + 1]
            hidden = l < n_layers - 1
            bn = hidden and spec.batch_norm
            name = str(l + 1)
            table[l, K.N_IN] = n_in
            table[l, K.N_OUT] = n_out
            table[l, K.OFF_W] = p
            self.param_slices["W" + name] = (p, (n_out, n_in))
            p += n_out * n_in
            if bn:  # batch norm's beta takes the bias's role
                table[l, K.OFF_GAMMA] = p
                self.param_slices["gamma" + name] = (p, (n_out,))
                p += n_out
                table[l, K.OFF_BETA] = p
                self.param_slices["beta" + name] = (p, (n_out,))
                p += n_out
                table[l, K.OFF_RMEAN] = s
                self.stat_slices["running_mean" + name] = (s, (n_out,))
                s += n_out
                table[l, K.OFF_RVAR] = s
                self.stat_slices["running_var" + name] = (s, (n_out,))
                s += n_out
                table[l, K.OFF_FEAT] = f
                f += 4 * n_out
                table[l, K.SLOT_ZHAT] = take_slot(n_out)
            else:
                table[l, K.OFF_B] = p
                self.param_slices["b" + name] = (p, (n_out,))
                p += n_out
            table[l, K.SLOT_Z] = take_slot(n_out)
            table[l, K.SLOT_A] = take_slot(n_out)
            table[l, K.SLOT_G] = take_slot(n_out)
            if hidden:
                table[l, K.ACT] = ACTIVATIONS[spec.activations[l]]
                if spec.keep_probs[l] < 1.0:
                    table[l, K.SLOT_MASK] = take_slot(n_out)
                    table[l, K.SLOT_DROP] = take_slot(n_out)
        self.table = table
        self.n_params = p
        self.n_stats = s
        self.n_feat = f
        self.units_per_row = slot
        # Inference needs only the input and each layer's Z slot, packed tightly.
        infer = table.copy()
        slot = sizes[0]
        for l in range(n_layers):
            infer[l, K.SLOT_Z] = slot
            slot += sizes[l + 1]
        self.infer_table = infer
        self.infer_units_per_row = slot
        self.head = HEADS[spec.task]
        self.keep = np.array([*spec.keep_probs, 1.0], dtype=np.float64)

    def views(self, flat, slices):
        return {name: flat[o:o + int(np.prod(shape))].reshape(shape) for name, (o, shape) in slices.items()}


class Workspace:
    """A growable flat buffer of `units_per_row * cap` values; grows, never shrinks,
    so a steady stream of equal batches allocates once."""

    def __init__(self, units_per_row, dtype):
        self.units_per_row = units_per_row
        self.dtype = dtype
        self.cap = 0
        self.buf = np.empty(0, dtype=dtype)

    def ensure(self, m):
        if m > self.cap:
            self.cap = max(m, 2 * self.cap)
            self.buf = np.zeros(self.units_per_row * self.cap, dtype=self.dtype)
        return self.buf


class InputGradWork:
    """Scratch of the input gradient beyond the inference workspace: the head's P and
    dZ (m, K) and one (m, widest hidden layer) buffer, cut from one growable Workspace."""

    def __init__(self, sizes, dtype):
        self.n_outputs = sizes[-1]
        self.widest = max(sizes[1:-1], default=0)
        self.work = Workspace(2 * self.n_outputs + self.widest, dtype)

    def parts(self, m):
        buf = self.work.ensure(m)
        k = m * self.n_outputs
        return (buf[:k].reshape(m, self.n_outputs), buf[k:2 * k].reshape(m, self.n_outputs),
                buf[2 * k:2 * k + m * self.widest])


class Network:
    """Parameters, gradients and running statistics of one network, in flat buffers.

    params: flat float buffer with per-layer views `self.params["W1"]`, ...
    grads:  same layout as params.   stats: running_mean / running_var of each
    batch-norm layer.
    """

    def __init__(self, spec: ModelSpec, rng: np.random.Generator):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.layout = Layout(spec)
        lay = self.layout
        self.flat_params = np.zeros(lay.n_params, dtype=self.dtype)
        self.flat_grads = np.zeros(lay.n_params, dtype=self.dtype)
        self.flat_stats = np.zeros(lay.n_stats, dtype=self.dtype)
        self.feat = np.zeros(lay.n_feat, dtype=self.dtype)
        self.params = lay.views(self.flat_params, lay.param_slices)
        self.grads = lay.views(self.flat_grads, lay.param_slices)
        self.stats = lay.views(self.flat_stats, lay.stat_slices)
        self.train_work = Workspace(lay.units_per_row, self.dtype)
        self.infer_work = Workspace(lay.infer_units_per_row, self.dtype)
        self.input_grad_work = InputGradWork(spec.layer_sizes, self.dtype)
        self.dropout_bits = bits_buffer(max(spec.layer_sizes))
        self.grad_square_sum = math.nan     # of flat_grads, as the last loss_and_grad left it
        self._initialize(rng)
        self.set_frozen(spec.freeze_layers)

    def set_frozen(self, layers):
        """Freeze the given layers (numbered from 1): `frozen` (L,) uint8 flags them for
        the running-statistics update, `frozen_ranges` (k, 2) holds each one's
        [start, stop) in the flat parameter buffer (a layer's W, b or gamma, beta lie
        together), whose gradient the step zeroes."""
        table = self.layout.table
        n_layers = table.shape[0]
        self.frozen = np.zeros(n_layers, dtype=np.uint8)
        ranges = []
        for l in layers:
            self.frozen[l - 1] = 1
            stop = int(table[l, K.OFF_W]) if l < n_layers else self.layout.n_params
            ranges.append((int(table[l - 1, K.OFF_W]), stop))
        self.frozen_ranges = np.array(ranges, dtype=np.int64).reshape(-1, 2)

    def trainable_slices(self):
        """param_slices of the layers that are not frozen."""
        frozen = {l + 1 for l in np.flatnonzero(self.frozen)}
        return {name: where for name, where in self.layout.param_slices.items()
                if int(name.lstrip("Wbgametabeta")) not in frozen}

    def _initialize(self, rng):
        sizes = self.spec.layer_sizes
        for l in range(1, len(sizes)):
            n_in, n_out = sizes[l - 1], sizes[l]
            W = self.params[f"W{l}"]
            init = self.spec.init
            if init == "zeros":
                W[...] = 0.0
                continue
            std = {"he": np.sqrt(2.0 / n_in), "xavier": np.sqrt(1.0 / n_in),
                   "glorot": np.sqrt(2.0 / (n_in + n_out)), "random": 0.01}[init]
            W[...] = rng.standard_normal((n_out, n_in)) * std
        for name, view in self.params.items():
            if name.startswith("gamma"):
                view[...] = 1.0
        for name, view in self.stats.items():
            if name.startswith("running_var"):
                view[...] = 1.0

    # -- passes ----------------------------------------------------------------------
    def loss_and_grad(self, X, Y, w, shift, inv_scale, rng_state, *, dropout=True, grad=True,
                      l2=None, l1=None):
        """Training-mode J on (X, Y, w) and, when grad, its gradient into self.flat_grads
        and the gradient's sum of squares into self.grad_square_sum (NaN without grad).

        X: (m, n0) raw  Y: (m, K) targets  w: (m,) weights over their mean or (0,).
        """
        spec = self.spec
        work = self.train_work.ensure(X.shape[0])
        loss, self.grad_square_sum = K.loss_and_grad(
            X, Y, w, shift, inv_scale, self.flat_params, self.flat_grads, self.layout.table,
            self.layout.keep, self.layout.head, spec.bn_eps,
            spec.l2 if l2 is None else l2, spec.l1 if l1 is None else l1,
            work, self.train_work.cap, self.feat, rng_state, dropout, grad, self.dropout_bits)
        return loss

    def input_loss_and_grad(self, X, Y, w, shift, inv_scale, dX, *, grad=True):
        """Inference-mode J on (X, Y, w) and, when grad, dJ/dX into dX (m, n0) in the
        network's dtype, through the input normalizer (kernels.network.input_loss_and_grad).
        Uses the inference workspace and a scratch of its own."""
        m = X.shape[0]
        work = self.infer_work.ensure(m)
        P, dZ, scratch = self.input_grad_work.parts(m)
        return K.input_loss_and_grad(X, Y, w, shift, inv_scale, self.flat_params, self.flat_stats,
                                     self.layout.infer_table, self.layout.head, self.spec.bn_eps, work,
                                     self.infer_work.cap, P, dZ, scratch, dX, grad)

    def head_outputs(self, m):
        """(m, n_outputs) view of the head's outputs (softmax rows, sigmoid
        probabilities or values) from the last training pass over m rows."""
        last = self.layout.table[-1]
        start = int(last[K.SLOT_A]) * self.train_work.cap
        n = int(last[K.N_OUT])
        return self.train_work.buf[start:start + m * n].reshape(m, n)

    def update_running_stats(self, m):
        K.update_running_stats(self.flat_stats, self.feat, self.layout.table, m, self.spec.bn_beta,
                               self.frozen)

    def copy_as(self, dtype):
        """A separate Network with this one's values cast to `dtype` (for gradient checks)."""
        spec = ModelSpec.from_dict({**self.spec.to_dict(), "dtype": np.dtype(dtype).name})
        other = Network.__new__(Network)
        Network.__init__(other, spec, np.random.default_rng(0))
        other.flat_params[...] = self.flat_params
        other.flat_stats[...] = self.flat_stats
        return other


SNAPSHOT_MAGIC = b"LEARNDSN"
SNAPSHOT_FORMAT = 3      # 2: out_scale and out_shift (standardized regression targets); 3: served, folded
_SNAPSHOT_HEAD = struct.Struct("<8sII")     # magic, format, meta length
_ALIGN = 64                                  # every array starts on a cache line
_SNAPSHOT_ARRAYS = ("table", "params", "stats", "shift", "inv_scale", "out_scale", "out_shift", "served",
                    "folded", "folded_half")


class Snapshot:
    """An immutable copy of everything inference needs: parameters, running statistics,
    the input normalizer's shift and scale, the map of outputs to target units
    (engine.targets), the layer table.  Self-contained, so it can
    be published to other threads, serialized, or sent to a replica.

    It also holds the serving weights, folded once when it is made: batch norm and the
    input normalizer's scale folded into each layer's W and b (kernels.serving;
    `folded`, laid out by `served`).  Predictions come from those; the input gradient
    (adversarial examples) from the trained parameters and statistics, as Network's.

    `to_bytes()` lays it out as one buffer (a header, a JSON description, then each
    array on a 64-byte boundary) and `Snapshot.from_buffer(buf)` reads one back without
    copying: its arrays are views of `buf`, so a process that maps a published snapshot
    predicts from the mapped memory itself.  `meta` carries what the publisher adds
    (which member of a population it is, for one).

    Each thread that predicts from a snapshot brings its own `Workspace`.
    """

    def __init__(self, network: Network, shift, inv_scale, version=0, meta=None, out_scale=None,
                 out_shift=None):
        self.version = version
        self.meta = dict(meta or {})
        self.dtype = network.dtype
        self.task = network.spec.task
        self.n_outputs = network.spec.n_outputs
        self.input_dim = network.spec.input_dim
        self.bn_eps = network.spec.bn_eps
        self.head = network.layout.head
        self.table = network.layout.infer_table.copy()
        self.units_per_row = network.layout.infer_units_per_row
        self.params = network.flat_params.copy()
        self.stats = network.flat_stats.copy()
        self.shift = np.array(shift, dtype=network.dtype)
        self.inv_scale = np.array(inv_scale, dtype=network.dtype)
        K_out = network.spec.n_outputs
        self.out_scale = np.array(np.ones(K_out) if out_scale is None else out_scale, dtype=network.dtype)
        self.out_shift = np.array(np.zeros(K_out) if out_shift is None else out_shift, dtype=network.dtype)
        self.served, n_folded = serving_layout(self.table)
        self.folded = np.empty(n_folded, dtype=network.dtype)
        self.folded_half = fold_weights(self.params, self.stats, self.table, self.inv_scale, self.bn_eps,
                                        self.folded, self.served, network.spec.serving_precision)
        for name in _SNAPSHOT_ARRAYS:
            getattr(self, name).flags.writeable = False

    def new_workspace(self):
        return Workspace(self.units_per_row, self.dtype)

    def predict_into(self, X, out, workspace):
        """Head outputs for X (m, n0) into out (m, K); X must be checked by the caller."""
        buf = workspace.ensure(X.shape[0])
        served_forward(X, self.shift, self.folded, self.folded_half, self.served, self.head, self.out_scale,
                       self.out_shift, buf, workspace.cap, out)
        return out

    def input_loss_and_grad_into(self, X, Y, dX, workspace, grad_work):
        """Inference-mode J on (X, Y) and dJ/dX into dX (m, n0), as Network's; Y in
        target units (mapped to the units the head learns here).  workspace from
        new_workspace(), grad_work from new_input_grad_work(); X checked by the caller."""
        m = X.shape[0]
        buf = workspace.ensure(m)
        P, dZ, scratch = grad_work.parts(m)
        Y = (Y - self.out_shift) / self.out_scale
        return K.input_loss_and_grad(X, Y, np.empty(0, dtype=self.dtype), self.shift, self.inv_scale, self.params, self.stats,
                                     self.table, self.head, self.bn_eps, buf, workspace.cap, P, dZ,
                                     scratch, dX, True)

    def new_input_grad_work(self):
        sizes = [int(self.table[0, K.N_IN])] + [int(n) for n in self.table[:, K.N_OUT]]
        return InputGradWork(sizes, self.dtype)

    # -- one buffer ------------------------------------------------------------------------
    def to_bytes(self):
        """The snapshot as one self-describing buffer (see the class docstring)."""
        return pack_buffer({name: getattr(self, name) for name in _SNAPSHOT_ARRAYS}, {
            "version": int(self.version), "meta": self.meta, "dtype": self.dtype.name,
            "task": self.task, "n_outputs": int(self.n_outputs), "input_dim": int(self.input_dim),
            "bn_eps": float(self.bn_eps), "head": int(self.head),
            "units_per_row": int(self.units_per_row)})

    @classmethod
    def from_buffer(cls, buf):
        """A Snapshot whose arrays are read-only views of `buf` (bytes, mmap, memoryview).

        Raises ValueError if `buf` is not a whole snapshot of a format this engine reads.
        """
        meta, arrays = unpack_buffer(buf)
        if meta.get("kind", "model") != "model":
            raise ValueError(f"a {meta['kind']} snapshot is not one model's (engine.ensemble.snapshot_from_buffer reads both)")
        return cls._from_parts(meta, arrays)

    @classmethod
    def _from_parts(cls, meta, arrays):
        snap = cls.__new__(cls)
        snap.folded_half = no_half()       # a buffer from before half serving existed
        for name, a in arrays.items():
            setattr(snap, name, a)
        snap.version = meta["version"]
        snap.meta = meta["meta"]
        snap.dtype = np.dtype(meta["dtype"])
        snap.task = meta["task"]
        snap.n_outputs = meta["n_outputs"]
        snap.input_dim = meta["input_dim"]
        snap.bn_eps = meta["bn_eps"]
        snap.head = meta["head"]
        snap.units_per_row = meta["units_per_row"]
        return snap


def pack_buffer(arrays, description):
    """One buffer: a header (magic, format, description length), the description as
    JSON with where each array lies, then each array on a 64-byte boundary."""
    layout, offset = {}, 0
    for name, a in arrays.items():
        layout[name] = [offset, list(a.shape), a.dtype.str]
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    meta = json.dumps({**description, "arrays": layout}).encode()
    start = -(-(_SNAPSHOT_HEAD.size + len(meta)) // _ALIGN) * _ALIGN
    out = bytearray(start + offset)
    _SNAPSHOT_HEAD.pack_into(out, 0, SNAPSHOT_MAGIC, SNAPSHOT_FORMAT, len(meta))
    out[_SNAPSHOT_HEAD.size:_SNAPSHOT_HEAD.size + len(meta)] = meta
    for name, a in arrays.items():
        o = start + layout[name][0]
        out[o:o + a.nbytes] = np.ascontiguousarray(a).tobytes()
    return bytes(out)


def unpack_buffer(buf):
    """(description, {name: read-only view of buf}) of a pack_buffer buffer; ValueError
    if it is not a whole one of a format this engine reads."""
    view = memoryview(buf).cast("B")
    if len(view) < _SNAPSHOT_HEAD.size:
        raise ValueError(f"{len(view)} bytes is shorter than a snapshot header")
    magic, fmt, meta_len = _SNAPSHOT_HEAD.unpack_from(view, 0)
    if magic != SNAPSHOT_MAGIC:
        raise ValueError("not a learnd snapshot (bad magic)")
    if fmt != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot format {fmt} is not supported")
    meta = json.loads(bytes(view[_SNAPSHOT_HEAD.size:_SNAPSHOT_HEAD.size + meta_len]))
    start = -(-(_SNAPSHOT_HEAD.size + meta_len) // _ALIGN) * _ALIGN
    arrays = {}
    for name, (offset, shape, dtype) in meta["arrays"].items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        o = start + offset
        if o + count * dt.itemsize > len(view):
            raise ValueError(f"snapshot truncated: array {name} ends past {len(view)} bytes")
        a = np.frombuffer(view, dtype=dt, count=count, offset=o).reshape(shape)
        if a.flags.writeable:
            a.flags.writeable = False
        arrays[name] = a
    return meta, arrays
