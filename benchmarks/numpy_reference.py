"""A plain NumPy implementation of the engine's training step and inference, as a
benchmark baseline.

It does exactly the steps `engine.Model.partial_fit` does for the settings the
benchmarks use, with the same shapes, layouts and float32 arithmetic:

- running (all-time, Welford/Chan) z-score of the inputs, statistics in float64,
  staged with each batch before its step;
- per layer ``Z = A W^T + b`` with ``W`` of shape (n_out, n_in); on hidden layers, when
  batch norm is on, batch norm with the batch's mean and biased variance instead of the
  bias; ReLU; inverted dropout;
- a softmax + cross-entropy head (multiclass) or a sigmoid + binary cross-entropy head
  (binary), each with its fused ``dZ = (P - Y) / m``;
- the L2 penalty ``(l2/2) sum ||W||^2`` in J and ``l2 W`` in dW (weights only);
- the backward pass (dW and db per layer, dA for every layer but the first, batch
  norm's and dropout's backward);
- the global gradient norm (the engine computes it every step to reject non-finite
  steps and to clip);
- Adam or momentum (``v = b1 v + (1 - b1) g; theta -= lr v``) over one flat parameter
  buffer, the same layout the engine uses;
- the EWMA running statistics of batch norm (the variance unbiased by m/(m-1)).

It is written the way a competent NumPy user would: preallocated flat buffers, views,
``out=`` arguments where they are free, no Python loops over samples.  It is not a
test oracle; it is there to show what the same work costs in NumPy.

Not part of the package; imported only by benchmarks/engine.py.
"""
from __future__ import annotations

import numpy as np

MIN_STD = 1e-8


class NumpyMLP:
    """A fully connected network trained one mini-batch per `partial_fit`.

    sizes: (n0, n1, ..., nL); hidden layers are 1..L-1.  task: "multiclass" or
    "binary".  optimizer: "adam" or "momentum".  keep_prob < 1 turns on inverted dropout
    on every hidden layer.  dtype float32 throughout, except the input statistics
    (float64, as in the engine).
    """

    def __init__(self, sizes, task="multiclass", batch_norm=True, keep_prob=1.0, l2=0.0,
                 optimizer="adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, bn_beta=0.9,
                 bn_eps=1e-5, normalize_inputs=True, seed=0, dtype=np.float32):
        if task not in ("multiclass", "binary"):
            raise ValueError(f"task must be multiclass or binary, got {task!r}")
        if optimizer not in ("adam", "momentum"):
            raise ValueError(f"optimizer must be adam or momentum, got {optimizer!r}")
        self.sizes = tuple(int(s) for s in sizes)
        self.L = len(self.sizes) - 1
        self.task = task
        self.batch_norm = batch_norm
        self.keep_prob = float(keep_prob)
        self.l2 = float(l2)
        self.optimizer = optimizer
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.bn_beta, self.bn_eps = bn_beta, bn_eps
        self.normalize_inputs = normalize_inputs
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.t = 0

        # One flat buffer for every parameter, one for the gradients, views per array.
        names = []
        for l in range(1, self.L + 1):
            n_in, n_out = self.sizes[l - 1], self.sizes[l]
            names.append((f"W{l}", (n_out, n_in)))
            if self._has_bn(l):
                names += [(f"gamma{l}", (n_out,)), (f"beta{l}", (n_out,))]
            else:
                names.append((f"b{l}", (n_out,)))
        total = sum(int(np.prod(s)) for _, s in names)
        self.flat = np.zeros(total, dtype=self.dtype)
        self.flat_grad = np.zeros(total, dtype=self.dtype)
        self.p, self.g = {}, {}
        o = 0
        for name, shape in names:
            n = int(np.prod(shape))
            self.p[name] = self.flat[o:o + n].reshape(shape)
            self.g[name] = self.flat_grad[o:o + n].reshape(shape)
            o += n
        init = np.random.default_rng(seed)   # He; the benchmarks load the engine's values
        for l in range(1, self.L + 1):
            n_in = self.sizes[l - 1]
            self.p[f"W{l}"][...] = init.standard_normal(self.p[f"W{l}"].shape) * np.sqrt(2.0 / n_in)
            if self._has_bn(l):
                self.p[f"gamma{l}"][...] = 1.0
        self.running = {}
        for l in range(1, self.L):
            if self.batch_norm:
                self.running[f"running_mean{l}"] = np.zeros(self.sizes[l], dtype=self.dtype)
                self.running[f"running_var{l}"] = np.ones(self.sizes[l], dtype=self.dtype)

        # Optimizer moments over the flat buffer, and a scratch buffer like it.
        self.v = np.zeros_like(self.flat)
        self.s = np.zeros_like(self.flat) if optimizer == "adam" else None
        self.tmp = np.zeros_like(self.flat)
        self.tmp2 = np.zeros_like(self.flat) if optimizer == "adam" else None

        # Input statistics (float64) and the float32 shift / scale they give.
        n0 = self.sizes[0]
        self.count = 0.0
        self.mean = np.zeros(n0)
        self.m2 = np.zeros(n0)
        self.shift = np.zeros(n0, dtype=self.dtype)
        self.inv_scale = np.ones(n0, dtype=self.dtype)
        self._cache = {}

    def _has_bn(self, l):
        return self.batch_norm and l < self.L

    def load_params(self, params, stats=None):
        """Copy parameters (and running statistics) by the engine's names."""
        for name, view in self.p.items():
            view[...] = params[name]
        for name, arr in (stats or {}).items():
            if name in self.running:
                self.running[name][...] = arr

    # -- input normalization -----------------------------------------------------------
    def _stage_inputs(self, X):
        """Chan/Welford merge of X into the all-time statistics; returns the new state
        and the float32 (shift, inv_scale) to train with."""
        if not self.normalize_inputs:
            return None, self.shift, self.inv_scale
        m = X.shape[0]
        total = self.count + m
        bmean = X.mean(axis=0, dtype=np.float64)
        d = X - bmean                                  # float64 (m, n0)
        bm2 = np.einsum("ij,ij->j", d, d)
        delta = bmean - self.mean
        new_m2 = self.m2 + bm2 + delta * delta * (self.count * m / total)
        new_mean = self.mean + delta * (m / total)
        std = np.sqrt(new_m2 / total)
        shift = new_mean.astype(self.dtype)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(std >= MIN_STD, 1.0 / std, 1.0).astype(self.dtype)
        return (total, new_mean, new_m2, shift, inv_scale), shift, inv_scale

    def _commit_inputs(self, staged):
        if staged is not None:
            self.count, self.mean, self.m2, self.shift, self.inv_scale = staged

    def _buffers(self, m):
        """Per-batch-size activation buffers, allocated once per m."""
        c = self._cache.get(m)
        if c is None:
            c = {"A0": np.empty((m, self.sizes[0]), dtype=self.dtype)}
            for l in range(1, self.L + 1):
                c[f"Z{l}"] = np.empty((m, self.sizes[l]), dtype=self.dtype)
                c[f"dZ{l}"] = np.empty((m, self.sizes[l]), dtype=self.dtype)
            self._cache[m] = c
        return c

    # -- training ------------------------------------------------------------------------
    def partial_fit(self, X, y):
        """One optimizer step on (X (m, n0) float32, y).  y: class ids (m,) for
        multiclass, 0/1 (m,) or (m, 1) for binary.  Returns J before the update."""
        m = X.shape[0]
        staged, shift, inv_scale = self._stage_inputs(X)
        buf = self._buffers(m)
        A = buf["A0"]
        np.subtract(X, shift, out=A)
        A *= inv_scale
        acts = [A]          # the input each layer reads (after dropout)
        cache = []
        penalty = 0.0
        for l in range(1, self.L + 1):
            W = self.p[f"W{l}"]
            Z = buf[f"Z{l}"]
            np.matmul(A, W.T, out=Z)
            if self.l2:
                penalty += 0.5 * self.l2 * float(np.vdot(W, W))
            if not self._has_bn(l):
                Z += self.p[f"b{l}"]
            if l == self.L:
                break
            entry = {}
            if self._has_bn(l):
                mu = Z.mean(axis=0)
                Z -= mu
                var = np.einsum("ij,ij->j", Z, Z) / m
                inv_std = 1.0 / np.sqrt(var + self.bn_eps)
                Z *= inv_std                       # Z now holds Zhat
                zhat = Z.copy()
                Z *= self.p[f"gamma{l}"]
                Z += self.p[f"beta{l}"]
                entry.update(mu=mu, var=var, inv_std=inv_std, zhat=zhat)
            A = np.maximum(Z, 0.0)
            entry["A"] = A
            if self.keep_prob < 1.0:
                mask = self.rng.random(A.shape, dtype=self.dtype) < self.keep_prob
                mask = mask.astype(self.dtype)
                mask *= 1.0 / self.keep_prob
                A = A * mask
                entry["mask"] = mask
            cache.append(entry)
            acts.append(A)

        # Head: loss and the fused dZ = (P - Y) / m.
        Z = buf[f"Z{self.L}"]
        dZ = buf[f"dZ{self.L}"]
        if self.task == "multiclass":
            y = np.asarray(y)
            zmax = Z.max(axis=1, keepdims=True)
            E = np.exp(Z - zmax)
            s = E.sum(axis=1, keepdims=True)
            rows = np.arange(m)
            loss = float(np.mean(np.log(s[:, 0]) + zmax[:, 0] - Z[rows, y]))
            np.divide(E, s, out=dZ)
            dZ[rows, y] -= 1.0
            dZ *= 1.0 / m
        else:
            Y = np.asarray(y, dtype=self.dtype).reshape(m, -1)
            P = 0.5 * (1.0 + np.tanh(0.5 * Z))     # stable sigmoid
            loss = float(np.sum(np.maximum(Z, 0.0) - Z * Y + np.log1p(np.exp(-np.abs(Z)))) / m)
            np.subtract(P, Y, out=dZ)
            dZ *= 1.0 / m
        loss += penalty

        # Backward.
        for l in range(self.L, 0, -1):
            W = self.p[f"W{l}"]
            dZ = buf[f"dZ{l}"]
            if l < self.L:
                entry = cache[l - 1]
                if "mask" in entry:
                    dZ *= entry["mask"]
                dZ *= entry["A"] > 0
                if self._has_bn(l):
                    zhat = entry["zhat"]
                    dbeta = self.g[f"beta{l}"]
                    dgamma = self.g[f"gamma{l}"]
                    np.sum(dZ, axis=0, out=dbeta)
                    np.einsum("ij,ij->j", dZ, zhat, out=dgamma)
                    k = self.p[f"gamma{l}"] * entry["inv_std"] / m
                    dZ *= m
                    dZ -= dbeta
                    dZ -= zhat * dgamma
                    dZ *= k
            np.matmul(dZ.T, acts[l - 1], out=self.g[f"W{l}"])
            if not self._has_bn(l):
                np.sum(dZ, axis=0, out=self.g[f"b{l}"])
            if l > 1:
                np.matmul(dZ, W, out=buf[f"dZ{l - 1}"])
            if self.l2:
                self.g[f"W{l}"] += self.l2 * W

        g = self.flat_grad
        norm = float(np.sqrt(np.dot(g, g)))
        if not (np.isfinite(loss) and np.isfinite(norm)):
            return loss
        self._step(g)
        for l in range(1, self.L):
            if self._has_bn(l):
                entry = cache[l - 1]
                b = self.bn_beta
                rm, rv = self.running[f"running_mean{l}"], self.running[f"running_var{l}"]
                rm *= b
                rm += (1.0 - b) * entry["mu"]
                rv *= b
                rv += (1.0 - b) * (m / (m - 1.0)) * entry["var"]
        self._commit_inputs(staged)
        return loss

    def _step(self, g):
        self.t += 1
        theta, v, tmp = self.flat, self.v, self.tmp
        b1 = self.beta1
        v *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        v += tmp
        if self.optimizer == "momentum":
            np.multiply(v, self.lr, out=tmp)
            theta -= tmp
            return
        b2, s, tmp2 = self.beta2, self.s, self.tmp2
        s *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        s += tmp
        c1 = 1.0 / (1.0 - b1 ** self.t)
        c2 = 1.0 / (1.0 - b2 ** self.t)
        np.multiply(s, c2, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps
        np.multiply(v, self.lr * c1, out=tmp2)
        tmp2 /= tmp
        theta -= tmp2

    # -- inference -------------------------------------------------------------------
    def predict_proba(self, X):
        """(m, K): softmax rows (multiclass) or sigmoid P(y=1) (binary), running
        statistics, no dropout."""
        A = (X - self.shift) * self.inv_scale
        for l in range(1, self.L + 1):
            Z = A @ self.p[f"W{l}"].T
            if not self._has_bn(l):
                Z += self.p[f"b{l}"]
            if l == self.L:
                break
            if self._has_bn(l):
                rm, rv = self.running[f"running_mean{l}"], self.running[f"running_var{l}"]
                Z -= rm
                Z *= self.p[f"gamma{l}"] / np.sqrt(rv + self.bn_eps)
                Z += self.p[f"beta{l}"]
            A = np.maximum(Z, 0.0, out=Z)
        if self.task == "multiclass":
            Z -= Z.max(axis=1, keepdims=True)
            np.exp(Z, out=Z)
            Z /= Z.sum(axis=1, keepdims=True)
            return Z
        return 0.5 * (1.0 + np.tanh(0.5 * Z))
