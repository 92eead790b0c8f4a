"""ADWIN (Bifet and Gavaldà, 2007), the ADWIN2 variant with exponential histograms, as
River implements it (river.drift.ADWIN: clock, max_buckets, min_window_length,
grace_period), over a batch of values at a time.

State, all arrays so a caller can checkpoint it and pass it in again:
  totals, variances: (LEVELS, max_buckets + 1) float64.  Level l holds buckets of 2**l
    values each, oldest first; a bucket keeps its values' sum and their variance times
    their count (the sum of squared deviations from their mean).
  counts: (LEVELS,) int64, buckets held at each level.
  fstate: (3,) float64 = [width, total, variance]: values in the window, their sum, and
    their sum of squared deviations.
  istate: (2,) int64 = [tick, levels]: values seen since the last reset, levels in use.
River resets the whole detector on the value after a detection; so does this kernel.
"""
import math

from numba import njit

LEVELS = 64      # 5 buckets of 2**63 values each: no stream fills them


@njit(cache=True, nogil=True)
def _reset(totals, variances, counts, fstate, istate):
    for l in range(totals.shape[0]):
        counts[l] = 0
        for k in range(totals.shape[1]):
            totals[l, k] = 0.0
            variances[l, k] = 0.0
    fstate[0] = 0.0
    fstate[1] = 0.0
    fstate[2] = 0.0
    istate[0] = 0
    istate[1] = 1


@njit(cache=True, nogil=True)
def _insert(totals, variances, counts, fstate, value, max_buckets):
    """Add one value as a bucket of size 1; keep at most max_buckets per level by merging
    the two oldest of a full level into one of the next."""
    width = fstate[0] + 1.0
    if width > 1.0:
        # Welford's update of the window's sum of squared deviations.
        d = value - fstate[1] / (width - 1.0)
        fstate[2] += (width - 1.0) * d * d / width
    fstate[0] = width
    fstate[1] += value
    totals[0, counts[0]] = value
    variances[0, counts[0]] = 0.0
    counts[0] += 1


@njit(cache=True, nogil=True)
def _compress(totals, variances, counts, istate, max_buckets):
    l = 0
    while counts[l] == max_buckets + 1:
        n = 2.0 ** l
        u1, u2 = totals[l, 0], totals[l, 1]
        d = u1 / n - u2 / n
        merged_var = variances[l, 0] + variances[l, 1] + n * n * d * d / (2.0 * n)
        nxt = l + 1
        if nxt >= istate[1]:
            istate[1] = nxt + 1
        totals[nxt, counts[nxt]] = u1 + u2
        variances[nxt, counts[nxt]] = merged_var
        counts[nxt] += 1
        # drop the two oldest of level l
        for k in range(counts[l] - 2):
            totals[l, k] = totals[l, k + 2]
            variances[l, k] = variances[l, k + 2]
        counts[l] -= 2
        l = nxt


@njit(cache=True, nogil=True)
def _delete_oldest(totals, variances, counts, fstate, istate):
    """Drop the oldest bucket (of the highest level in use); returns its size."""
    l = istate[1] - 1
    n = 2.0 ** l
    u = totals[l, 0]
    v = variances[l, 0]
    fstate[0] -= n
    fstate[1] -= u
    width = fstate[0]
    if width > 0:
        d = u / n - fstate[1] / width
        fstate[2] -= v + n * width * d * d / (n + width)
    for k in range(counts[l] - 1):
        totals[l, k] = totals[l, k + 1]
        variances[l, k] = variances[l, k + 1]
    counts[l] -= 1
    if counts[l] == 0 and l > 0:
        istate[1] -= 1
    return n


@njit(cache=True, nogil=True)
def _cut(width, variance, n0, n1, delta_mean, delta, min_window_length):
    """ADWIN's test: the two sub-windows' means differ by more than epsilon_cut."""
    delta_prime = math.log(2.0 * math.log(width) / delta)
    m_recip = 1.0 / (n0 - min_window_length + 1.0) + 1.0 / (n1 - min_window_length + 1.0)
    epsilon = math.sqrt(2.0 * m_recip * (variance / width) * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip
    return abs(delta_mean) > epsilon


@njit(cache=True, nogil=True)
def _detect(totals, variances, counts, fstate, istate, delta, min_window_length):
    """Every sub-window split, oldest buckets first; a cut drops the oldest bucket and
    tests again.  Returns 0 without a change, else +1 when the newer sub-window's mean is
    the higher at the first cut (the values rose), -1 when it is the lower."""
    detected = 0
    reduce_width = True
    while reduce_width:
        reduce_width = False
        n0, n1 = 0.0, fstate[0]
        u0, u1 = 0.0, fstate[1]
        done = False
        for l in range(istate[1] - 1, -1, -1):
            if done:
                break
            n2 = 2.0 ** l
            for k in range(counts[l]):
                u2 = totals[l, k]
                n0 += n2
                n1 -= n2
                u0 += u2
                u1 -= u2
                if l == 0 and k == counts[l] - 1:
                    done = True
                    break
                if n1 >= min_window_length and n0 >= min_window_length and \
                        _cut(fstate[0], fstate[2], n0, n1, u0 / n0 - u1 / n1, delta, min_window_length):
                    reduce_width = True
                    if detected == 0:
                        detected = 1 if u1 / n1 > u0 / n0 else -1
                    if fstate[0] > 0:
                        _delete_oldest(totals, variances, counts, fstate, istate)
                    done = True
                    break
    return detected


@njit(cache=True, nogil=True)
def adwin_update(values, totals, variances, counts, fstate, istate, found, rises,
                 delta, clock, max_buckets, min_window_length, grace_period):
    """Feed values (m,) in order; found (m,) int64 receives the positions at which a
    change was detected, rises (m,) int8 whether each was a rise (1) or a fall (0) of
    the mean.  Returns how many were found.  After a detection the detector
    starts afresh with the next value (as River's ADWIN does)."""
    n_found = 0
    pending_reset = istate[0] < 0          # a detection on the last value of the previous batch
    if pending_reset:
        _reset(totals, variances, counts, fstate, istate)
    for i in range(values.shape[0]):
        _insert(totals, variances, counts, fstate, values[i], max_buckets)
        _compress(totals, variances, counts, istate, max_buckets)
        istate[0] += 1
        if istate[0] % clock == 0 and fstate[0] > grace_period:
            direction = _detect(totals, variances, counts, fstate, istate, delta, min_window_length)
            if direction != 0:
                found[n_found] = i
                rises[n_found] = 1 if direction > 0 else 0
                n_found += 1
                if i + 1 < values.shape[0]:
                    _reset(totals, variances, counts, fstate, istate)
                else:
                    istate[0] = -1          # reset before the next value, whenever it comes
    return n_found
