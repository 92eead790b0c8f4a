"""Data-parallel steps: a model that trains as one rank of a group holding the same model.

Every rank takes its own rows; at each step the ranks sum what a step needs to agree on,
so that all of them apply the same update and keep equal models.  The engine only needs
a sum across ranks; it never imports MPI.  Anything with

    rank: int                      this rank, 0 .. size - 1
    size: int                      ranks in the group
    sum(buf) -> None               buf (n,) float64: replaced, in place, by the element-wise
                                   sum of every rank's buf (identical on every rank)

is a collective (learnd.daemon.training.parallel wraps an mpi4py communicator's
Allreduce).  Every rank must make the same calls in the same order.

What is summed, and why each part must be:

- the gradient, weighted by rows: rank r's gradient of J on its m_r rows, times m_r,
  summed and divided by M = sum m_r, is the gradient of J on the union of the batches
  (J averages over rows; its L2/L1 part is the same on every rank and so stays as it
  is).  A rank without rows this step contributes 0 rows and a zero gradient.
- the input normalizer's and the regression targets' batch moments (count, mean, sum of
  squared deviations), pooled with Chan's formula, so every rank folds the union of the
  batches into its all-time statistics and scales its inputs the same way.
- batch norm's batch mean and variance, pooled the same way, for the running statistics
  (inference): every rank keeps the running statistics of the union of the batches.
  Training still normalizes each rank's rows with that rank's own batch statistics (no
  synchronized batch norm), so with batch norm on, the group equals no single model on
  the concatenated batch; it equals itself on every rank.
- rows, for `samples_seen` (the learning-rate schedule counts the group's rows).
- whether the step is finite: a rank whose loss, gradient or batch statistics are not
  finite sends NaN, every rank's sum is then not finite, and every rank skips the step.
"""
from __future__ import annotations

import numpy as np

from .kernels import network as K


def pooled_moments(collective, count, mean, m2):
    """The count, mean (n,) and sum of squared deviations m2 (n,) of the union of every
    rank's rows, from each rank's own (count, mean, m2); a rank without rows gives count 0.

    Two sums: the count and the weighted means first, then each rank's m2 plus its
    count times its mean's squared distance from the pooled mean (Chan et al.), which
    never subtracts two large sums of squares from each other.
    """
    n = mean.shape[0]
    first = np.empty(n + 1)
    first[0] = count
    np.multiply(mean, count, out=first[1:])
    collective.sum(first)
    total = first[0]
    pooled_mean = first[1:] / total if total > 0 else np.zeros(n)
    second = m2 + count * (mean - pooled_mean) ** 2
    collective.sum(second)
    return total, pooled_mean, second


class GroupStep:
    """The sums of one data-parallel step, over one network's buffers.

    buffer layout (float64): the gradient (n_params,) times this rank's rows, then rows,
    then for each batch-norm layer rows * batch mean and rows * (batch variance + mean^2)
    (n_out,) each.
    """

    def __init__(self, collective, network):
        self.collective = collective
        self.network = network
        table = network.layout.table
        self._bn = [(int(row[K.OFF_FEAT]), int(row[K.N_OUT])) for row in table if row[K.OFF_GAMMA] >= 0]
        n = network.flat_grads.size
        self._rows_at = n
        self._buf = np.empty(n + 1 + sum(2 * width for _, width in self._bn))

    def reduce(self, m, ok):
        """Replace this rank's gradient (from m rows; zero when m is 0) by the group's and,
        with batch norm, its batch statistics by the group's; returns the group's rows.

        ok: this rank's step is finite.  If it is not, the group's gradient comes out NaN
        on every rank.  Shapes: the network's flat_grads (n_params,) and feat.
        """
        net, buf = self.network, self._buf
        n = self._rows_at
        if ok:
            np.multiply(net.flat_grads, m, out=buf[:n])
        else:
            buf[:n] = np.nan
        buf[n] = m
        at = n + 1
        for f, width in self._bn:
            if m == 0:      # feat still holds an earlier step's statistics (maybe not finite)
                buf[at:at + 2 * width] = 0.0
            else:
                mean, var = net.feat[f:f + width], net.feat[f + width:f + 2 * width]
                np.multiply(mean, m, out=buf[at:at + width])
                buf[at + width:at + 2 * width] = (var + mean * mean) * m
            at += 2 * width
        self.collective.sum(buf)
        total = buf[n]
        if total > 0:
            np.divide(buf[:n], total, out=net.flat_grads, casting="same_kind")
        at = n + 1
        for f, width in self._bn:
            if total > 0:
                mean = buf[at:at + width] / total
                # E[x^2] - E[x]^2 of the union: its biased variance, as the kernels keep it.
                net.feat[f:f + width] = mean
                net.feat[f + width:f + 2 * width] = np.maximum(buf[at + width:at + 2 * width] / total
                                                               - mean * mean, 0.0)
            at += 2 * width
        return int(total)
