"""Replay (rehearsal): learn more from every row by stepping again on rows already seen.

A stream seen once gives one optimizer step per batch; learners that update on every
row get far more out of the same rows.  `Replay` keeps the most recent `rows` training
rows in a ring and, after each new batch, takes up to `ratio` more steps on batches
drawn from that ring, weighted towards the newest rows (`recency`): after a drift the
new concept soon fills the replayed batches, so replay does not hold on to the past
(docs/learning.md measures it on sea_drift).

A sudden change is also cut off: the ring watches the model's errors on the rows it
is given (ADWIN, as the daemon's drift watch), and when they rise it stops drawing rows
older than the change, keeping only the rows the detector holds as the new concept.
So the window can be long on a stationary stream (old rows revisited) without holding
the model to a concept that has gone.

The daemon's trainer uses the same object: it adds each trained batch and takes the
replay steps only while no new training data waits.

    model = Model(task="multiclass", n_outputs=10)
    replay = Replay(model)               # 4096 rows, 16 steps per batch, recency 256
    for X, y in stream:                  # X (m, d), y as partial_fit takes it
        replay.learn(X, y)               # partial_fit, remember, then 16 replay steps

Rows are stored as given (raw inputs, targets as the (m, n_outputs) float matrix the
model trains on), so a replayed row is scaled by the normalizer as it is now.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .drift import ADWIN, row_errors
from .errors import EngineError
from .labels import write_targets


class Replay:
    """A ring of the last `rows` training rows of `model`, and replay steps on it.

    rows: capacity of the ring (rows kept).  ratio: replay steps per new batch in
    `learn`.  batch_size: rows per replay step (None: the size of the batches added,
    at least 2).  seed: of the draws.  recency: the mean age, in rows, of the rows drawn
    (an exponential weighting towards the newest, truncated to the ring); None draws
    uniformly.  forget_on_drift: watch the errors `observe` is given and, when they rise,
    draw only from the rows after the change (classification; a regression model's
    errors are not watched, as in the daemon).  The defaults are the daemon's, chosen by
    measurement (docs/learning.md).
    """

    def __init__(self, model, rows=4096, ratio=16, batch_size=None, seed=0, recency=256.0,
                 forget_on_drift=True):
        if int(rows) < 2:
            raise EngineError(f"replay rows must be at least 2, got {rows}")
        if int(ratio) < 0:
            raise EngineError(f"replay ratio must be >= 0, got {ratio}")
        if recency is not None and not float(recency) > 0:
            raise EngineError(f"replay recency must be a number of rows > 0, got {recency}")
        if batch_size is not None and int(batch_size) < 2:
            raise EngineError(f"replay batch_size must be at least 2, got {batch_size}")
        self.model = model
        self.capacity = int(rows)
        self.ratio = int(ratio)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.recency = None if recency is None else float(recency)
        self.rng = np.random.default_rng(seed)
        self.steps = 0            # replay steps taken (non-finite ones included)
        self.filled = 0           # rows in the ring
        self.next = 0             # where the next row goes
        self.added = 0            # rows ever added
        self.window_start = 0     # the value of `added` before the oldest row still drawn
        self.detector = ADWIN() if forget_on_drift else None
        self.cuts = 0             # times a rise of the error cut the window
        self._last_batch = 0
        self.x = None             # (capacity, d) model dtype, made on the first add
        self.Y = None             # (capacity, K) model dtype
        self.w = None             # (capacity,) float64; 1.0 for rows that came without weights

    # -- the ring ------------------------------------------------------------------------
    def _allocate(self, d):
        K, dtype = self.model.spec.n_outputs, self.model.dtype
        self.x = np.empty((self.capacity, d), dtype=dtype)
        self.Y = np.empty((self.capacity, K), dtype=dtype)
        self.w = np.ones(self.capacity)
        b = self.capacity
        self._xb = np.empty((b, d), dtype=dtype)
        self._Yb = np.empty((b, K), dtype=dtype)
        self._wb = np.empty(b)
        self._u = np.empty(b)
        self._idx = np.empty(b, dtype=np.intp)

    def add(self, x, Y, w=None):
        """Remember rows the model has just trained on.  x (m, d) inputs, Y (m, K) float
        targets (as the model trains on them), w (m,) weights or None.  The oldest rows
        make room; a batch larger than the ring keeps its last `rows` rows."""
        m = x.shape[0]
        if m == 0:
            return
        if self.x is None:
            self._allocate(x.shape[1])
        self._last_batch = m
        self.added += m
        if m > self.capacity:
            x, Y = x[-self.capacity:], Y[-self.capacity:]
            w = None if w is None else w[-self.capacity:]
            m = self.capacity
        first = min(m, self.capacity - self.next)      # rows before the ring wraps
        for src, dst in ((slice(0, first), slice(self.next, self.next + first)),
                         (slice(first, m), slice(0, m - first))):
            self.x[dst] = x[src]
            self.Y[dst] = Y[src]
            self.w[dst] = 1.0 if w is None else w[src]
        self.next = (self.next + m) % self.capacity
        self.filled = min(self.capacity, self.filled + m)

    def remember(self, X, y, sample_weight=None):
        """`add` for labels as partial_fit takes them (class ids, 0/1, values...)."""
        self.add(*self._encode(X, y, sample_weight))

    def _encode(self, X, y, sample_weight):
        """(X, Y, w) as `add` takes them, from a batch as partial_fit takes it."""
        X = np.ascontiguousarray(X, dtype=self.model.dtype)
        m, K = X.shape[0], self.model.spec.n_outputs
        Y = np.empty((m, K), dtype=self.model.dtype)
        write_targets(self.model.spec.task, K, y, m, Y)
        return X, Y, None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)

    # -- the window drawn from -------------------------------------------------------------
    @property
    def window(self):
        """Rows replay draws from: the newest rows since the last cut (at least a
        batch's worth, when the ring has them), at most the ring."""
        since = self.added - self.window_start
        return min(self.filled, max(since, self._last_batch, 2))

    def forget(self, keep):
        """Stop drawing all but the newest `keep` rows of the ring (rows added later are
        drawn as usual)."""
        self.window_start = max(self.window_start, self.added - max(0, int(keep)))

    def observe(self, errors):
        """Feed the per-row errors (r,) of a batch scored before it is learned and added
        (engine.drift.row_errors); when they rose, forget the rows before the change.
        Returns True on a cut."""
        if self.detector is None or errors is None or len(errors) == 0 or self.model.spec.task == "regression":
            return False
        self.detector.update(errors)
        if not self.detector.rises.any():
            return False
        # The detector's window now holds the rows since the change, this batch's
        # included; this batch is not in the ring yet.
        self.forget(self.detector.width - len(errors))
        self.cuts += 1
        return True

    # -- steps -----------------------------------------------------------------------------
    @property
    def step_rows(self):
        """Rows per replay step: batch_size, or the size of the last batch added."""
        b = self.batch_size if self.batch_size is not None else max(2, self._last_batch)
        return min(b, self.filled)

    def ready(self):
        return self.filled >= 2 and self.model.network is not None

    def _draw_ages(self, u):
        """Fill u with ages in [0, window): uniform, or with `recency` the exponential
        distribution of mean `recency` rows truncated to the window (inverse CDF:
        age = -r ln(1 - u (1 - exp(-window / r))))."""
        self.rng.random(out=u)
        n = self.window
        if self.recency is None:
            np.multiply(u, n, out=u)
            return
        np.multiply(u, -math.expm1(-n / self.recency), out=u)
        np.negative(u, out=u)
        np.log1p(u, out=u)
        np.multiply(u, -self.recency, out=u)
        np.minimum(u, n - 1, out=u)      # u < 1 keeps it below n; rounding might not

    def step(self):
        """One replay step on a batch drawn (with replacement) from the ring; returns
        its J, or None when the ring holds fewer than two rows."""
        if not self.ready():
            return None
        b = self.step_rows
        u, idx = self._u[:b], self._idx[:b]
        self._draw_ages(u)
        idx[:] = u                        # truncates to whole ages in [0, filled)
        # Age 0 is the newest row.  Ages, not ring slots, are drawn, so a ring restored
        # from get_state (laid out from 0) draws the same rows as the one saved.
        np.subtract(self.next - 1 + self.capacity, idx, out=idx)
        np.remainder(idx, self.capacity, out=idx)
        xb, Yb, wb = self._xb[:b], self._Yb[:b], self._wb[:b]
        np.take(self.x, idx, axis=0, out=xb, mode="clip")   # "raise" would buffer
        np.take(self.Y, idx, axis=0, out=Yb, mode="clip")
        np.take(self.w, idx, out=wb, mode="clip")
        mean = wb.mean()
        if mean <= 0:                           # only rows of weight 0 drawn: nothing to learn
            return None
        np.divide(wb, mean, out=wb)             # the weights a step takes have mean 1
        self.steps += 1
        # The rows were checked and their targets encoded when they were first learned.
        return self.model.rehearse_checked(xb, Yb, wb)

    def learn(self, X, y, sample_weight=None):
        """partial_fit on the new batch, watch its errors (scored by the step's own
        forward pass, before the update), remember it, then `ratio` replay steps.
        Returns the new batch's J (as partial_fit)."""
        steps_before = self.model.nonfinite_steps
        loss = self.model.partial_fit(X, y, sample_weight)
        if self.model.nonfinite_steps == steps_before:      # a refused step is not learned
            X, Y, w = self._encode(X, y, sample_weight)
            if self.detector is not None:
                self.observe(row_errors(self.model.spec.task, self.model.last_batch_outputs(), Y))
            self.add(X, Y, w)
        for _ in range(self.ratio):
            self.step()
        return loss

    # -- state -------------------------------------------------------------------------------
    def get_state(self):
        """The ring's rows oldest first, the counters, the window and its detector
        (copies; everything but the rows is JSON-able)."""
        state = {"x": None, "Y": None, "w": None, "steps": self.steps, "added": self.added,
                 "last_batch": self._last_batch, "rng": json.dumps(self.rng.bit_generator.state),
                 "window_start": self.window_start, "cuts": self.cuts,
                 "detector": None if self.detector is None else json.dumps(self.detector.plain_state())}
        if self.x is not None:
            order = np.arange(self.next - self.filled, self.next) % self.capacity
            state.update(x=self.x[order], Y=self.Y[order], w=self.w[order])
        return state

    def set_state(self, state):
        """Take rows and counters from get_state (a ring of another capacity keeps the newest)."""
        self.filled = self.next = 0
        if state["x"] is not None and len(state["x"]):
            if self.x is None:
                self._allocate(state["x"].shape[1])
            self.add(state["x"], state["Y"], state["w"])
        self.steps = int(state["steps"])
        self.added = int(state["added"])
        self._last_batch = int(state["last_batch"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        # States saved before the window existed draw from the whole ring.
        self.window_start = int(state.get("window_start", 0))
        self.cuts = int(state.get("cuts", 0))
        if self.detector is not None and state.get("detector") is not None:
            self.detector.set_state(json.loads(state["detector"]))
