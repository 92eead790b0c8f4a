"""Where a training step's time goes: the kernels, and the Python around them.

    python -m benchmarks.overhead [--rounds 15] [--json out.json]

For W1 and W2 (benchmarks.engine's workloads, one BLAS thread), in alternating rounds,
medians over the rounds:

  step     µs per `Model.partial_fit` on a prepared batch
  kernels  µs for the same step's kernels called back to back with their arguments
           ready: the input check, the label kernels, Welford and the normalizer's
           scale, forward and backward (which also sums the gradient's squares for
           the global norm), the statistics check, the optimizer and the running
           statistics (each through its Numba dispatcher, as the engine calls them,
           plus a Python lambda's call: ~0.05 µs each)
  python   step - kernels: what the engine's Python around the kernels costs a step

and each kernel's µs per call, timed one by one within a step's sequence.  The sequence follows
`Model.partial_fit` for a model without augmentation, frozen layers or a group (the
workloads here); `test_overhead_kernels_are_the_steps` checks that the kernels alone
take a step exactly as partial_fit does, so the two columns time the same work.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: import the project, not this folder
    import os
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import numpy as np
from threadpoolctl import threadpool_limits

from learnd.engine import Model
from learnd.engine.kernels import network as K
from learnd.engine.kernels.labels import class_ids_to_onehot, copy_into, first_bad_binary
from learnd.engine.kernels.normalize import count_nonfinite, normalizer_scale, welford_merge
from learnd.engine.kernels.optim import adam_step, momentum_step
from benchmarks.engine import W1_BATCH, W1_SPEC, W2_BATCH, W2_SPEC
from benchmarks.harness import report

WORKLOADS = (("W1", W1_SPEC, W1_BATCH), ("W2", W2_SPEC, W2_BATCH))


def make_batch(model, batch, rng):
    """One batch (X (batch, n0) float32, y) the model's task accepts: int class ids or 0/1."""
    spec = model.spec
    X = rng.standard_normal((batch, spec.input_dim), dtype=np.float32)
    if spec.task == "multiclass":
        return X, rng.integers(0, spec.n_outputs, batch)
    return X, rng.integers(0, 2, batch)


def kernel_calls(model, X, y):
    """[(name, call)]: the kernels one partial_fit(X, y) runs, in its order, each a
    zero-argument callable with its arguments bound.  The model must have taken a step
    (its buffers exist) and must be of the kind the module docstring names."""
    spec, net, norm = model.spec, model.network, model.normalizer
    if spec.augments or spec.freeze_layers or model._group is not None:
        raise SystemExit("kernel_calls follows a plain step: no augmentation, frozen layers or group")
    if spec.task not in ("multiclass", "binary") or spec.optimizer not in ("adam", "momentum"):
        raise SystemExit(f"kernel_calls covers multiclass/binary with adam/momentum, not {spec.task}/{spec.optimizer}")
    m, K_out = X.shape[0], spec.n_outputs
    Y = model._target_buffer(m)
    w = model._weights[:0]
    calls = [("input check", lambda: count_nonfinite(X))]
    if spec.task == "multiclass":
        calls.append(("labels", lambda: class_ids_to_onehot(y, K_out, Y)))
    else:
        y2 = y.reshape(m, 1)
        calls.append(("labels", lambda: (first_bad_binary(y2, False), copy_into(y2, Y))))
    count, mean, m2 = norm.count, norm.mean, norm.m2
    new_mean, new_m2, shift, inv_scale = norm._mean, norm._m2, norm._shift, norm._inv_scale
    calls.append(("Welford + scale", lambda: normalizer_scale(
        welford_merge(X, count, mean, m2, new_mean, new_m2), new_mean, new_m2, shift, inv_scale)))
    work = net.train_work.ensure(m)
    layout, rng_state = net.layout, model.rng_state
    args = (X, Y, w, shift, inv_scale, net.flat_params, net.flat_grads, layout.table, layout.keep,
            layout.head, spec.bn_eps, spec.l2, spec.l1, work, net.train_work.cap, net.feat, rng_state,
            True, True, net.dropout_bits)
    calls.append(("forward + backward", lambda: K.loss_and_grad(*args)))
    if net.feat.size:
        feat = net.feat.reshape(1, -1)
        calls.append(("statistics check", lambda: count_nonfinite(feat)))
    grads, params = net.flat_grads, net.flat_params
    # The optimizer's scalars as the model's next step computes them (no clipping here)
    opt, lr = model.optimizer, model.learning_rate
    kind = params.dtype.type
    tiny = np.finfo(params.dtype).tiny
    if spec.optimizer == "adam":
        v, s = opt.state["v"], opt.state["s"]
        t = opt.t + 1
        c = tuple(kind(x) for x in (1.0, lr / (1.0 - opt.beta1 ** t), opt.beta1, 1.0 - opt.beta1, opt.beta2,
                                    1.0 - opt.beta2, 1.0 / (1.0 - opt.beta2 ** t), opt.eps, tiny))
        calls.append(("optimizer", lambda: adam_step(params, grads, v, s, *c)))
    else:
        v = opt.state["v"]
        c = tuple(kind(x) for x in (1.0, lr, opt.beta1, 1.0 - opt.beta1, tiny))
        calls.append(("optimizer", lambda: momentum_step(params, grads, v, *c)))
    if net.flat_stats.size:
        stats, table, frozen = net.flat_stats, layout.table, net.frozen
        calls.append(("running statistics",
                      lambda: K.update_running_stats(stats, net.feat, table, m, spec.bn_beta, frozen)))
    return calls


def _cycling(fns):
    """A callable that calls fns[0], fns[1], ... in turn, one per call."""
    state = {"i": 0}
    n = len(fns)

    def call():
        i = state["i"]
        state["i"] = i + 1 if i + 1 < n else 0
        fns[i]()
    return call


def _time_per_call(fn, n):
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        gc.enable()


N_BATCHES = 64   # steps cycle through these, as in benchmarks.engine: one batch over and
                 # over drives the gradient toward denormal floats, which time like nothing real


def measure(rounds, iterations):
    """{workload: {"step", "kernels", "python", "by_kernel": {name: µs}}} as medians
    over `rounds` alternating rounds; each round times `iterations[name]` calls."""
    rng = np.random.default_rng(0)
    setups = {}
    for name, spec, batch in WORKLOADS:
        model = Model(**spec)
        batches = [make_batch(model, batch, rng) for _ in range(N_BATCHES)]
        model.partial_fit(*batches[0])
        per_batch = [kernel_calls(model, X, y) for X, y in batches]
        step = _cycling([lambda X=X, y=y, model=model: model.partial_fit(X, y) for X, y in batches])
        kernels = _cycling([lambda fns=tuple(fn for _, fn in c): [fn() for fn in fns] for c in per_batch])
        setups[name] = (step, kernels, per_batch)
    samples = {name: {"step": [], "kernels": [], "by_kernel": []} for name in setups}
    with threadpool_limits(limits=1, user_api="blas"):
        for step, kernels, _ in setups.values():   # warm every path once
            _time_per_call(step, 5)
            _time_per_call(kernels, 5)
        for _ in range(rounds):
            for name, (step, kernels, per_batch) in setups.items():
                n = iterations[name]
                # step and kernels alternate within the round, so drift hits both alike
                samples[name]["step"].append(_time_per_call(step, n))
                samples[name]["kernels"].append(_time_per_call(kernels, n))
                samples[name]["by_kernel"].append(_time_each_kernel(per_batch, n))
    figures = {}
    for name, s in samples.items():
        step = statistics.median(s["step"])
        kern = statistics.median(s["kernels"])
        figures[name] = {"step_us": step, "kernels_us": kern, "python_us": step - kern,
                         "by_kernel_us": {k: statistics.median(r[k] for r in s["by_kernel"])
                                          for k in s["by_kernel"][0]},
                         "rounds": rounds, "iterations": iterations[name]}
    return figures


def _time_each_kernel(per_batch, n):
    """{kernel: µs per call} over n steps' kernels, each call timed on its own (the
    kernels see the state a real step leaves: timing one kernel in a loop of its own,
    an optimizer applying the same gradient over and over, would not)."""
    clock = time.perf_counter_ns
    totals = {name: 0 for name, _ in per_batch[0]}
    gc.disable()
    try:
        for i in range(n):
            for name, fn in per_batch[i % len(per_batch)]:
                t0 = clock()
                fn()
                totals[name] += clock() - t0
    finally:
        gc.enable()
    return {name: t / n / 1e3 for name, t in totals.items()}


def print_table(figures):
    print("µs per training step, 1 BLAS thread, medians over rounds")
    print(f"{'workload':<10}{'step':>10}{'kernels':>10}{'python':>10}{'python share':>14}")
    for name, f in figures.items():
        print(f"{name:<10}{f['step_us']:>10.1f}{f['kernels_us']:>10.1f}{f['python_us']:>10.1f}"
              f"{f['python_us'] / f['step_us']:>14.0%}")
    for name, f in figures.items():
        print(f"\n{name}: each kernel alone, µs per call")
        for k, v in f["by_kernel_us"].items():
            print(f"  {k:<22}{v:>10.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer calls")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    scale = 0.2 if args.quick else 1.0
    iterations = {"W1": max(10, int(100 * scale)), "W2": max(100, int(2000 * scale))}
    return report(measure(rounds, iterations), print_table, args.json)


if __name__ == "__main__":
    main()
