"""Engine throughput and latency against a plain NumPy implementation of the same steps,
PyTorch eager, and the GEMM-only bound.

    python -m benchmarks.engine [--json PATH] [--rounds N] [--block SECONDS] ...
    python benchmarks/engine.py  (the same)

Workloads (the engine's defaults for every setting not named):

  W1  Model(hidden=(256, 128), task="multiclass", n_outputs=10, input_dim=784,
            batch_norm=True, keep_prob=0.8, optimizer="adam", l2=1e-4), batch 128
  W2  Model(hidden=(64, 64), task="binary", input_dim=32, optimizer="momentum",
            lr=0.01), batch 32 (batch norm, init etc. at whatever the engine's defaults are;
            the baselines mirror the built model's settings)

Measured in one run, into one table: training samples/s of W1 and W2; W1's one-sample
predict_proba latency (p50, p99), also served from half-precision weights
(serving_precision="half", the same trained parameters), and its throughput at batch
1024; the same for
benchmarks/numpy_reference.py (NumPy, the same steps) and benchmarks/torch_reference.py
(PyTorch eager, skipped when torch is not importable); and the GEMM-only bound of W1:
the time its 8 GEMMs alone take in NumPy at batch 128 (3 forward; dW for each of the 3
layers and dA for layers 2 and 3 backward).

Method.  The machine is small (2 cores) and shared, so single runs differ by tens of
percent.  Everything is warmed first (Numba compilation or cache load, PyTorch's first
calls, BLAS thread pools).  Then the measurements run in rounds; each round runs one
block (~--block seconds) of every measurement, in an order rotated from round to round,
with a short pause between blocks so that the spinning worker threads of one
BLAS/OpenMP pool do not steal the core from the next block.  Around every block the
CPU time the rest of the machine used is read from /proc/stat; a block is "quiet" when
other processes kept fewer than --quiet-threshold cores busy.  Each figure is the
median over the quiet rounds (over every round, marked "!", when fewer than 3 were
quiet), with the half inter-quartile range as its spread; each ratio is the median of
the per-round ratios of blocks of the same round (for one-row latency, of the rounds'
p50s); pooled latency percentiles use every call of the quiet rounds.  The ratios of
each side's best round are printed too.  BLAS threads are set explicitly with
threadpoolctl for the engine and NumPy (both on NumPy's OpenBLAS: engine.kernels.blas;
SciPy's, through Numba's np.dot, where NumPy carries another BLAS), PyTorch's with torch.set_num_threads: --blas-threads and
--torch-threads (2) for W1 training and batch-1024 predict; W2 training and the
one-row predict run at 1 and at 2 threads for both learnd and PyTorch and report each
side's better setting.  Python's cyclic GC is off inside timed blocks, as timeit does.
Data are synthetic, from numpy.random.default_rng(seed).  A full run takes about 80 s
on an idle machine; --budget caps it.

All three implementations start from the engine's initial parameters, and a short
check at start-up (dropout off) confirms they compute the same losses and updates.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import time

if __package__ in (None, ""):
    # Run as a script: put the repository first on the path (for benchmarks.*), and drop
    # benchmarks/ itself, whose modules would otherwise shadow same-named packages.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from learnd.engine import Model
from learnd.engine.kernels.blas import uses_numpy_blas
from benchmarks.numpy_reference import NumpyMLP

try:
    import torch
    from benchmarks.torch_reference import TorchMLP
except ImportError:  # the torch columns are skipped
    torch = None
    TorchMLP = None

W1_SPEC = dict(hidden=(256, 128), task="multiclass", n_outputs=10, input_dim=784,
               batch_norm=True, keep_prob=0.8, optimizer="adam", l2=1e-4)
W1_BATCH = 128
W2_SPEC = dict(hidden=(64, 64), task="binary", input_dim=32, optimizer="momentum", lr=0.01)
W2_BATCH = 32
PREDICT_BATCH = 1024

MIN_QUIET = 3      # quiet rounds needed before the figures use only those

TARGETS = {
    "w1_vs_torch_fused": (">=", 2.5),
    "w1_vs_gemm_bound": (">=", 0.7),
    "w2_vs_torch": (">=", 10.0),
    "predict_p50_vs_torch": ("<=", 0.1),
    "predict_half_p50_vs_torch": ("<=", 0.1),
}


# -- the three implementations, configured alike ------------------------------------------
def baseline_config(spec):
    """The settings the baselines need, read from the engine model's spec; refuses the
    settings the baselines do not implement."""
    unsupported = []
    if set(spec.activations) != {"relu"}:
        unsupported.append(f"activation={spec.activation!r}")
    if spec.l1 or spec.clip_norm is not None or spec.schedule != "constant":
        unsupported.append("l1 / clip_norm / schedule")
    if spec.dtype != "float32":
        unsupported.append(f"dtype={spec.dtype}")
    if len(set(spec.keep_probs)) > 1:
        unsupported.append("per-layer keep_prob")
    if spec.task not in ("multiclass", "binary") or spec.optimizer not in ("adam", "momentum"):
        unsupported.append(f"task={spec.task} optimizer={spec.optimizer}")
    if unsupported:
        raise SystemExit(f"the baselines do not implement {', '.join(unsupported)}")
    return dict(task=spec.task, batch_norm=spec.batch_norm,
                keep_prob=spec.keep_probs[0] if spec.keep_probs else 1.0, l2=spec.l2,
                optimizer=spec.optimizer, lr=spec.lr, beta1=spec.beta1, beta2=spec.beta2,
                eps=spec.eps, bn_beta=spec.bn_beta, bn_eps=spec.bn_eps,
                normalize_inputs=spec.normalize_inputs)


class Workload:
    """One network in three implementations, with its synthetic data."""

    def __init__(self, name, spec_kwargs, batch, rng, n_batches, with_torch, adam_impls=()):
        self.name = name
        self.batch = batch
        self.model = Model(**spec_kwargs)
        spec = self.model.spec
        self.sizes = tuple(spec.layer_sizes)
        self.config = baseline_config(spec)
        self.spec = spec.to_dict()
        n0 = self.sizes[0]
        self.X = rng.standard_normal((n_batches, batch, n0), dtype=np.float32)
        self.X *= 2.0
        self.X += 0.5
        if spec.task == "multiclass":
            self.y = rng.integers(0, spec.n_outputs, (n_batches, batch))
        else:
            self.y = rng.integers(0, 2, (n_batches, batch))
        self.ref = NumpyMLP(self.sizes, seed=spec.seed, **self.config)
        self.ref.load_params(self.model.params, self.model.params)
        self.torch = {}
        self.targets = None
        if with_torch:
            if spec.task == "multiclass":
                self.targets = [torch.from_numpy(y) for y in self.y]
            else:
                self.targets = [torch.from_numpy(y.astype(np.float32).reshape(-1, 1)) for y in self.y]
            for impl in adam_impls or ("-",):
                tm = TorchMLP(self.sizes, adam_impl=impl, **self.config)
                tm.load_params(self.model.params, self.model.params)
                tm.train()
                self.torch[impl] = tm

    def learnd_steps(self, n, start):
        X, y, fit = self.X, self.y, self.model.partial_fit
        k = X.shape[0]
        for i in range(start, start + n):
            fit(X[i % k], y[i % k])

    def numpy_steps(self, n, start):
        X, y, fit = self.X, self.y, self.ref.partial_fit
        k = X.shape[0]
        for i in range(start, start + n):
            fit(X[i % k], y[i % k])

    def torch_steps(self, impl, n, start):
        X, t, tm = self.X, self.targets, self.torch[impl]
        tm.train()
        fit = tm.partial_fit
        k = X.shape[0]
        for i in range(start, start + n):
            fit(X[i % k], t[i % k])


class GemmBound:
    """W1's GEMMs alone, in NumPy, with the engine's layouts: Z = A W^T forward;
    dW = dZ^T A and dA = dZ W backward (no dA for the first layer)."""

    def __init__(self, sizes, m, rng):
        f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
        L = len(sizes) - 1
        self.A = [f(m, sizes[l]) for l in range(L + 1)]              # A0 .. A_L (Z_L)
        self.W = [None] + [f(sizes[l], sizes[l - 1]) for l in range(1, L + 1)]
        self.dW = [None] + [f(sizes[l], sizes[l - 1]) for l in range(1, L + 1)]
        self.dZ = [f(m, sizes[l]) for l in range(L + 1)]
        self.L = L
        self.flops = 0
        for l in range(1, L + 1):
            mnk = m * sizes[l] * sizes[l - 1]
            self.flops += 2 * mnk * (3 if l > 1 else 2)
        self.n_gemms = 3 * L - 1

    def run(self, n):
        A, W, dW, dZ, L, mm = self.A, self.W, self.dW, self.dZ, self.L, np.matmul
        for _ in range(n):
            for l in range(1, L + 1):
                mm(A[l - 1], W[l].T, out=A[l])
            for l in range(L, 0, -1):
                mm(dZ[l].T, A[l - 1], out=dW[l])
                if l > 1:
                    mm(dZ[l], W[l], out=dZ[l - 1])


# -- equivalence check ----------------------------------------------------------------------
def check_equivalence(with_torch, steps=5, seed=123):
    """Same initial parameters, dropout off: the engine, NumPy and PyTorch must agree on
    every step's loss and on the parameters after `steps` steps.  Returns a report."""
    rng = np.random.default_rng(seed)
    report = {}
    for name, kw, batch in (("W1", W1_SPEC, W1_BATCH), ("W2", W2_SPEC, W2_BATCH)):
        kw = {**kw, "keep_prob": 1.0}
        model = Model(**kw)
        spec = model.spec
        sizes = tuple(spec.layer_sizes)
        cfg = baseline_config(spec)
        ref = NumpyMLP(sizes, seed=spec.seed, **cfg)
        ref.load_params(model.params, model.params)
        tm = None
        if with_torch:
            tm = TorchMLP(sizes, **cfg)
            tm.load_params(model.params, model.params)
            tm.train()
        loss_diff = {"numpy": 0.0, "torch": 0.0}
        for _ in range(steps):
            X = (rng.standard_normal((batch, sizes[0])) * 2 + 0.5).astype(np.float32)
            y = rng.integers(0, spec.n_outputs if spec.task == "multiclass" else 2, batch)
            penalty = 0.5 * spec.l2 * sum(float(np.vdot(v, v)) for k, v in model.params.items()
                                          if k.startswith("W"))
            a = model.partial_fit(X, y)
            loss_diff["numpy"] = max(loss_diff["numpy"], abs(a - ref.partial_fit(X, y)))
            if tm is not None:
                t = torch.from_numpy(y) if spec.task == "multiclass" else \
                    torch.from_numpy(y.astype(np.float32).reshape(-1, 1))
                # torch's loss leaves the L2 penalty out (it is weight_decay there).
                b = tm.partial_fit(X, t) + penalty
                loss_diff["torch"] = max(loss_diff["torch"], abs(a - b))
        P = model.params

        def rel(a, b):
            return float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))

        ref_views = {**ref.p, **ref.running}
        entry = {"numpy_param_rel_diff": max(rel(P[k], ref_views[k]) for k in P),
                 "numpy_loss_abs_diff": loss_diff["numpy"]}
        if tm is not None:
            entry["torch_loss_abs_diff"] = loss_diff["torch"]
        if tm is not None:
            tv = {}
            for l, lin in enumerate(tm.linears, start=1):
                tv[f"W{l}"] = lin.weight.detach().numpy()
                if lin.bias is not None:
                    tv[f"b{l}"] = lin.bias.detach().numpy()
            for l, bn in enumerate(tm.bns, start=1):
                tv[f"gamma{l}"] = bn.weight.detach().numpy()
                tv[f"beta{l}"] = bn.bias.detach().numpy()
                tv[f"running_mean{l}"] = bn.running_mean.numpy()
                tv[f"running_var{l}"] = bn.running_var.numpy()
            entry["torch_param_rel_diff"] = max(rel(P[k], tv[k]) for k in P)
        entry["ok"] = all(v < 1e-3 for k, v in entry.items() if k.endswith("rel_diff")) and \
            all(v < 1e-4 for k, v in entry.items() if k.endswith("loss_abs_diff"))
        report[name] = entry
    return report


# -- timing -----------------------------------------------------------------------------------
class Block:
    """One measurement: `run(n)` does n iterations.  kind "rate": the figure is
    units*n/seconds; kind "latency": every call's time is kept."""

    def __init__(self, key, label, run, units, kind="rate", pre=None, warm=2):
        self.key = key
        self.label = label
        self.run = run
        self.units = units
        self.kind = kind
        self.pre = pre          # called before the block (thread settings, mode)
        self.warm = warm        # untimed iterations at the start of every block
        self.n = 1
        self.values = []        # per round: rate, or p50 for latency blocks
        self.samples = []       # latency blocks, per round: every call's time (s)
        self.loads = []         # per round: cores other processes kept busy meanwhile

    def calibrate(self, target_s):
        """Pick n so that a block takes about target_s, from the fastest of a few tries
        (a burst of outside load during calibration would otherwise shrink n)."""
        if self.pre:
            self.pre()
        n = 1
        while True:
            t0 = time.perf_counter()
            self.run(n)
            dt = time.perf_counter() - t0
            if dt > 0.04 or n >= 1 << 20:
                break
            n *= 4
        for _ in range(3):
            t0 = time.perf_counter()
            self.run(n)
            dt = min(dt, time.perf_counter() - t0)
        self.n = max(5, int(round(n * target_s / dt)))

    def measure(self):
        if self.pre:
            self.pre()
        if self.warm:
            self.run(self.warm)
        gc.disable()
        try:
            s0 = cpu_snapshot()
            if self.kind == "rate":
                t0 = time.perf_counter()
                self.run(self.n)
                dt = time.perf_counter() - t0
                self.values.append(self.units * self.n / dt)
            else:
                times = self.run(self.n)
                self.samples.append(times)
                self.values.append(float(np.median(times)))
            self.loads.append(other_load(s0, cpu_snapshot()))
        finally:
            gc.enable()


def latency_runner(predict, rows):
    """n calls of predict on one (1, n0) row each; returns the call times (s)."""
    k = len(rows)
    clock = time.perf_counter

    def run(n):
        out = [0.0] * n
        for i in range(n):
            x = rows[i % k]
            t0 = clock()
            predict(x)
            out[i] = clock() - t0
        return out
    return run


def summary(values):
    v = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "best": float(v.max()),
            "spread_pct": float(50.0 * (q3 - q1) / med) if med else 0.0,
            "rounds": [float(x) for x in v]}


# -- environment ---------------------------------------------------------------------------
def cpu_snapshot():
    """(wall s, machine busy CPU s, this process's CPU s) for measuring other load."""
    busy = None
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return time.perf_counter(), busy, time.process_time()


def other_load(start, end):
    """Average number of cores that other processes kept busy between two snapshots."""
    if start[1] is None or end[1] is None:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def environment(blas_threads, torch_threads):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                                timeout=5).stdout.strip()
    except Exception:
        commit = ""
    import numba
    import scipy
    pools = [{"lib": os.path.basename(p["filepath"]), "api": p["user_api"],
              "threads": p["num_threads"]} for p in threadpool_info()]
    return {"python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__ if torch is not None else None,
            "cpu": cpu, "cpus": os.cpu_count(), "git_commit": commit,
            "blas_threads": blas_threads, "torch_threads": torch_threads,
            "engine_blas": "numpy" if uses_numpy_blas() else "scipy (np.dot)",
            "thread_pools": pools, "loadavg_start": list(os.getloadavg())}


# -- the run ----------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--rounds", type=int, default=15, help="measurement rounds (default 15)")
    ap.add_argument("--block", type=float, default=0.25,
                    help="target seconds per timed block (default 0.25)")
    ap.add_argument("--latency-calls", type=int, default=500,
                    help="at least this many one-sample predict calls per block (default 500)")
    ap.add_argument("--settle", type=float, default=0.05,
                    help="pause between blocks, seconds (default 0.05)")
    ap.add_argument("--blas-threads", type=int, default=2,
                    help="BLAS threads for the engine and NumPy (default 2)")
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="PyTorch threads for W1 training and batch-1024 predict (default 2); "
                         "W2 training and 1-row predict try 1 and 2")
    ap.add_argument("--budget", type=float, default=170.0,
                    help="stop adding rounds when the run would pass this many seconds "
                         "(default 170; at least 5 rounds run)")
    ap.add_argument("--quiet-threshold", type=float, default=0.25,
                    help="a block is quiet when other processes kept fewer cores than this "
                         "busy while it ran; figures use quiet rounds when there are >= 3 "
                         "(default 0.25)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    args = ap.parse_args(argv)

    use_torch = torch is not None and not args.no_torch
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    if use_torch:
        torch.set_num_threads(args.torch_threads)
    log("building workloads and warming up (Numba compile or cache load) ...")
    w1 = Workload("W1", W1_SPEC, W1_BATCH, rng, 32, use_torch, adam_impls=("fused", "foreach"))
    w2 = Workload("W2", W2_SPEC, W2_BATCH, rng, 64, use_torch)
    gemm = GemmBound(w1.sizes, W1_BATCH, rng)
    pred_rows = [np.ascontiguousarray(r) for r in
                 rng.standard_normal((256, 1, w1.sizes[0]), dtype=np.float32)]
    pred_big = rng.standard_normal((PREDICT_BATCH, w1.sizes[0]), dtype=np.float32)

    # Warm up: compile / load every kernel, start every thread pool, then fix the
    # BLAS threads (SciPy's OpenBLAS, which Numba's np.dot calls, loads on its first GEMM).
    w1.learnd_steps(3, 0)
    w2.learnd_steps(3, 0)
    w1.model.predict_proba(pred_rows[0])
    w1.model.predict_proba(pred_big)
    # W1 served from half-precision weights (serving_precision="half"): the same trained
    # parameters; the few-row path needs no BLAS, so it runs once, at 1 BLAS thread.
    w1_half = copy.deepcopy(w1.model)
    w1_half.spec.serving_precision = "half"
    w1_half.refold()
    w1_half.predict_proba(pred_rows[0])
    limiter = threadpool_limits(limits=args.blas_threads, user_api="blas")  # noqa: F841
    env = environment(args.blas_threads, args.torch_threads if use_torch else None)

    log("checking that the three implementations compute the same steps ...")
    equivalence = check_equivalence(use_torch)
    for name, entry in equivalence.items():
        if not entry["ok"]:
            log(f"WARNING: {name} implementations disagree: {entry}")

    tm1 = w1.torch.get("fused")

    def torch_threads(n):
        return lambda: torch.set_num_threads(n)

    def torch_eval(n):
        def pre():
            torch.set_num_threads(n)
            for tm in w1.torch.values():
                tm.eval()
        return pre

    def blas(n):
        """Set the BLAS pools (NumPy's and SciPy's OpenBLAS) to n threads for a block."""
        return lambda: threadpool_limits(limits=n, user_api="blas")

    B = args.blas_threads
    counters = {}

    def stepper(fn, key):
        counters[key] = 0

        def run(n):
            fn(n, counters[key])
            counters[key] += n
        return run

    blocks = [
        Block("w1_train/learnd", "learnd", stepper(w1.learnd_steps, "w1l"), W1_BATCH, pre=blas(B)),
        Block("w1_train/numpy", "numpy", stepper(w1.numpy_steps, "w1n"), W1_BATCH, pre=blas(B)),
        Block("w1_gemm/numpy", "gemm", gemm.run, W1_BATCH, pre=blas(B)),
        Block("w2_train/numpy", "numpy", stepper(w2.numpy_steps, "w2n"), W2_BATCH, pre=blas(B)),
        Block("w1_predict1/numpy", "numpy", latency_runner(w1.ref.predict_proba, pred_rows), 1,
              kind="latency", warm=20, pre=blas(B)),
        Block("w1_predict1/learnd_half", "learnd", latency_runner(w1_half.predict_proba, pred_rows), 1,
              kind="latency", warm=20, pre=blas(1)),
        Block("w1_predict1024/learnd", "learnd",
              lambda n: [w1.model.predict_proba(pred_big) for _ in range(n)], PREDICT_BATCH, pre=blas(B)),
        Block("w1_predict1024/numpy", "numpy",
              lambda n: [w1.ref.predict_proba(pred_big) for _ in range(n)], PREDICT_BATCH, pre=blas(B)),
    ]
    for th in (1, 2):
        blocks.append(Block(f"w2_train/learnd_{th}t", "learnd", stepper(w2.learnd_steps, f"w2l{th}"),
                            W2_BATCH, pre=blas(th)))
        blocks.append(Block(f"w1_predict1/learnd_{th}t", "learnd",
                            latency_runner(w1.model.predict_proba, pred_rows), 1, kind="latency",
                            warm=20, pre=blas(th)))
    if use_torch:
        for impl in ("fused", "foreach"):
            blocks.append(Block(f"w1_train/torch_{impl}", f"torch {impl} Adam",
                                stepper(lambda n, s, impl=impl: w1.torch_steps(impl, n, s), "w1t" + impl),
                                W1_BATCH, pre=torch_threads(args.torch_threads)))
        for th in (1, 2):
            blocks.append(Block(f"w2_train/torch_{th}t", f"torch {th} thread(s)",
                                stepper(lambda n, s: w2.torch_steps("-", n, s), f"w2t{th}"),
                                W2_BATCH, pre=torch_threads(th)))
        for th in (1, 2):
            blocks.append(Block(f"w1_predict1/torch_{th}t", "torch", latency_runner(tm1.predict_proba, pred_rows),
                                1, kind="latency", warm=20, pre=torch_eval(th)))
        blocks.append(Block("w1_predict1024/torch", "torch",
                            lambda n: [tm1.predict_proba(pred_big) for _ in range(n)], PREDICT_BATCH,
                            pre=torch_eval(args.torch_threads)))

    log("calibrating block sizes ...")
    for b in blocks:
        if b.kind == "latency":
            # at least --latency-calls calls, and long enough (~0.6 block) for the
            # outside-load estimate, which has the kernel's 10 ms tick resolution
            if b.pre:
                b.pre()
            b.run(200)
            per_call = min(float(np.median(b.run(200))) for _ in range(3))
            b.n = max(args.latency_calls, int(0.6 * args.block / per_call))
        else:
            b.calibrate(args.block)
    log(f"measuring: {args.rounds} rounds of {len(blocks)} interleaved blocks ...")
    snap0 = cpu_snapshot()
    last_round = 0.0
    done = 0
    for r in range(args.rounds):
        round_start = time.perf_counter()
        if r >= 5 and (round_start - t_start) + last_round > args.budget:
            log(f"  stopping after {r} rounds to stay within --budget {args.budget:.0f} s")
            break
        gc.collect()
        k = r % len(blocks)
        for b in blocks[k:] + blocks[:k]:
            time.sleep(args.settle)
            b.measure()
        last_round = time.perf_counter() - round_start
        done = r + 1
        log(f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)")

    env["loadavg_end"] = list(os.getloadavg())
    env["other_processes_cores_busy"] = other_load(snap0, cpu_snapshot())
    results = build_results(blocks, use_torch, args.quiet_threshold)
    out = {"benchmark": "benchmarks.engine", "environment": env,
           "settings": {"rounds": done, "rounds_asked": args.rounds, "budget_seconds": args.budget, "block_seconds": args.block,
                        "latency_calls_per_block": args.latency_calls, "settle_seconds": args.settle,
                        "quiet_threshold_cores": args.quiet_threshold,
                        "seed": args.seed,
                        "W1": {"spec": w1.spec, "batch": W1_BATCH, "baseline_config": w1.config},
                        "W2": {"spec": w2.spec, "batch": W2_BATCH, "baseline_config": w2.config},
                        "gemm_bound": {"gemms": gemm.n_gemms, "flops_per_step": gemm.flops},
                        "block_iterations": {b.key: b.n for b in blocks}},
           "equivalence_check": equivalence,
           **results,
           "elapsed_seconds": time.perf_counter() - t_start}
    print_table(out, use_torch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        log(f"wrote {args.json}")
    return 0


def build_results(blocks, use_torch, quiet_threshold):
    """Summaries, ratios and targets.  A block counts as quiet when other processes kept
    fewer than `quiet_threshold` cores busy while it ran; figures use the quiet rounds
    when there are at least MIN_QUIET of them, else every round (and say so)."""
    by = {b.key: b for b in blocks}
    n_rounds = len(blocks[0].values)

    def quiet(b):
        return [l is not None and l < quiet_threshold for l in b.loads]

    def rounds_of(*bs):
        q = [i for i in range(n_rounds) if all(quiet(b)[i] for b in bs)]
        return (q, True) if len(q) >= MIN_QUIET else (list(range(n_rounds)), False)

    res = {}
    ratios, ratio_rounds, choices = {}, {}, {}
    for b in blocks:
        group, who = b.key.split("/")
        idx, is_quiet = rounds_of(b)
        if b.kind == "latency":
            s = np.concatenate([b.samples[i] for i in idx]) * 1e6
            entry = {"p50_us": float(np.percentile(s, 50)), "p99_us": float(np.percentile(s, 99)),
                     "mean_us": float(s.mean()), "calls": int(s.size),
                     "best_round_p50_us": min(b.values) * 1e6,
                     "round_p50_us": [v * 1e6 for v in b.values]}
        else:
            entry = summary([b.values[i] for i in idx])
            entry["us_per_iteration"] = 1e6 * b.units / entry["median"]
            entry["all_rounds"] = summary(b.values)
        entry["rounds_used"] = len(idx)
        entry["quiet_rounds_only"] = is_quiet
        entry["other_load_per_round"] = b.loads
        res.setdefault(group, {})[who] = entry


    def paired(key, a, b):
        """Median over the rounds where both blocks were quiet of a[r] / b[r]."""
        idx, is_quiet = rounds_of(by[a], by[b])
        va, vb = np.asarray(by[a].values), np.asarray(by[b].values)
        ratios[key] = float(np.median(va[idx] / vb[idx]))
        ratio_rounds[key] = len(idx) if is_quiet else -len(idx)

    def p50_ratio(key, a, b):
        ratios[key] = res[a.split("/")[0]][a.split("/")[1]]["p50_us"] / \
            res[b.split("/")[0]][b.split("/")[1]]["p50_us"]

    paired("w1_vs_gemm_bound", "w1_train/learnd", "w1_gemm/numpy")
    paired("w1_vs_numpy", "w1_train/learnd", "w1_train/numpy")
    w2r = res["w2_train"]
    choices["w2_learnd"] = max(("learnd_1t", "learnd_2t"), key=lambda k: w2r[k]["median"])
    w2r["learnd"] = w2r[choices["w2_learnd"]]
    by["w2_train/learnd"] = by["w2_train/" + choices["w2_learnd"]]
    paired("w2_vs_numpy", "w2_train/learnd", "w2_train/numpy")
    lat = res["w1_predict1"]
    choices["predict_learnd"] = min(("learnd_1t", "learnd_2t"), key=lambda k: lat[k]["p50_us"])
    lat["learnd"] = lat[choices["predict_learnd"]]
    p50_ratio("predict_p50_vs_numpy", "w1_predict1/learnd", "w1_predict1/numpy")
    paired("predict1024_vs_numpy", "w1_predict1024/learnd", "w1_predict1024/numpy")
    if use_torch:
        paired("w1_vs_torch_fused", "w1_train/learnd", "w1_train/torch_fused")
        paired("w1_vs_torch_foreach", "w1_train/learnd", "w1_train/torch_foreach")
        best = max(("torch_fused", "torch_foreach"), key=lambda k: res["w1_train"][k]["median"])
        choices["w1_torch"] = best
        ratios["w1_vs_torch"] = ratios["w1_vs_" + best]
        ratio_rounds["w1_vs_torch"] = ratio_rounds["w1_vs_" + best]
        best2 = max(("torch_1t", "torch_2t"), key=lambda k: res["w2_train"][k]["median"])
        choices["w2_torch"] = best2
        paired("w2_vs_torch", "w2_train/learnd", "w2_train/" + best2)
        choices["predict_torch"] = min(("torch_1t", "torch_2t"), key=lambda k: lat[k]["p50_us"])
        lat["torch"] = lat[choices["predict_torch"]]
        # per-round p50s paired like the rates (the host has slow and fast spells
        # lasting seconds that hit every implementation; pooling alone would let
        # them decide); the pooled-p50 ratio is kept alongside
        paired("predict_p50_vs_torch", "w1_predict1/" + choices["predict_learnd"],
               "w1_predict1/" + choices["predict_torch"])
        p50_ratio("predict_p50_vs_torch_pooled", "w1_predict1/learnd", "w1_predict1/torch")
        paired("predict_half_p50_vs_torch", "w1_predict1/learnd_half", "w1_predict1/" + choices["predict_torch"])
        ratios["predict_p99_vs_torch"] = res["w1_predict1"]["learnd"]["p99_us"] / \
            res["w1_predict1"]["torch"]["p99_us"]
        paired("predict1024_vs_torch", "w1_predict1024/learnd", "w1_predict1024/torch")

    # The same ratios from each side's best round: an estimate of the uncontended
    # figures when outside load comes in bursts (timeit's "take the minimum" advice).
    top = lambda key: max(by[key].values)  # noqa: E731
    best_ratios = {"w1_vs_gemm_bound": top("w1_train/learnd") / top("w1_gemm/numpy")}
    if use_torch:
        best_ratios["w1_vs_torch_fused"] = top("w1_train/learnd") / top("w1_train/torch_fused")
        best_ratios["w1_vs_torch"] = top("w1_train/learnd") / top("w1_train/" + choices["w1_torch"])
        best_ratios["w2_vs_torch"] = max(top("w2_train/learnd_1t"), top("w2_train/learnd_2t")) / \
            max(top("w2_train/torch_1t"), top("w2_train/torch_2t"))
        best_ratios["predict_p50_vs_torch"] = \
            min(min(by["w1_predict1/learnd_1t"].values), min(by["w1_predict1/learnd_2t"].values)) / \
            min(min(by["w1_predict1/torch_1t"].values), min(by["w1_predict1/torch_2t"].values))
        best_ratios["predict_half_p50_vs_torch"] = min(by["w1_predict1/learnd_half"].values) / \
            min(min(by["w1_predict1/torch_1t"].values), min(by["w1_predict1/torch_2t"].values))
    targets = {}
    for key, (op, goal) in TARGETS.items():
        if key in ratios:
            v = ratios[key]
            targets[key] = {"value": v, "best_rounds_value": best_ratios.get(key),
                            "rounds_used": ratio_rounds.get(key), "target": f"{op} {goal}",
                            "met": bool(v >= goal if op == ">=" else v <= goal)}
    return {"results": res, "ratios": ratios, "ratio_rounds": ratio_rounds,
            "best_round_ratios": best_ratios, "torch_choice": choices, "targets": targets}


def _rate(entry):
    v = entry["median"]
    s = f"{v / 1e3:,.1f}k" if v < 1e6 else f"{v / 1e6:,.2f}M"
    flag = "" if entry["quiet_rounds_only"] else "!"
    return f"{s} ±{entry['spread_pct']:.0f}% n={entry['rounds_used']}{flag}"


def print_table(out, use_torch):
    env, res, ratios = out["environment"], out["results"], out["ratios"]
    ch = out["torch_choice"]
    print()
    print(f"learnd engine benchmark  ({env['cpu']}, {env['cpus']} CPUs, git {env['git_commit'] or '?'}; "
          f"numpy {env['numpy']}, numba {env['numba']}, torch {env['torch'] or 'not installed'})")
    tt = f", torch threads {env['torch_threads']}" if use_torch else ""
    engine_blas = {"numpy": "NumPy's OpenBLAS", "scipy (np.dot)": "SciPy's OpenBLAS"}.get(env.get("engine_blas"), "?")
    print(f"BLAS threads {env['blas_threads']} (engine on {engine_blas}, NumPy on its OpenBLAS){tt}; "
          f"W2 train and 1-row predict: learnd's and torch's better of 1 and 2 threads; "
          f"{out['settings']['rounds']} interleaved rounds; load avg {env['loadavg_start'][0]:.2f} -> "
          f"{env['loadavg_end'][0]:.2f}")
    busy = env.get("other_processes_cores_busy")
    if busy is not None:
        note = " (figures are noisy: other work shared the CPUs)" if busy > 0.15 else ""
        print(f"other processes kept {busy:.2f} of {env['cpus']} cores busy on average{note}")
    thr = out["settings"]["quiet_threshold_cores"]
    print(f"figures: median ± half-IQR over the n rounds whose block ran while other processes kept "
          f"< {thr} cores busy\n(n=..! : fewer than {MIN_QUIET} were that quiet, so every round counts); "
          f"latency percentiles pool every call of those rounds")
    cols = ["learnd", "numpy-ref", "torch eager" if use_torch else "torch (n/a)", "learnd/numpy",
            "learnd/torch"]
    rows = []

    def tcell(group, key):
        if not use_torch:
            return "-"
        return _rate(res[group][key])

    rows.append(["W1 train samples/s (b=128)", _rate(res["w1_train"]["learnd"]),
                 _rate(res["w1_train"]["numpy"]),
                 tcell("w1_train", ch.get("w1_torch", "")) + (f" [{ch['w1_torch'][6:]}]" if use_torch else ""),
                 f"{ratios['w1_vs_numpy']:.2f}x", f"{ratios['w1_vs_torch']:.2f}x" if use_torch else "-"])
    if use_torch:
        other = "torch_foreach" if ch["w1_torch"] == "torch_fused" else "torch_fused"
        rows.append([f"  (torch {other[6:]} Adam)", "", "", _rate(res["w1_train"][other]), "",
                     f"{ratios['w1_vs_' + other]:.2f}x"])
    rows.append(["W1 train us/step", f"{res['w1_train']['learnd']['us_per_iteration']:,.0f}",
                 f"{res['w1_train']['numpy']['us_per_iteration']:,.0f}",
                 f"{res['w1_train'][ch['w1_torch']]['us_per_iteration']:,.0f}" if use_torch else "-", "", ""])
    g = res["w1_gemm"]["numpy"]
    rows.append([f"W1 GEMM-only bound ({out['settings']['gemm_bound']['gemms']} GEMMs in NumPy)", "",
                 f"{_rate(g)} ({g['us_per_iteration']:,.0f} us)", "",
                 f"{ratios['w1_vs_gemm_bound']:.2f}x of it", ""])
    rows.append(["W2 train samples/s (b=32)", _rate(res["w2_train"]["learnd"]) + f" [{ch['w2_learnd'][-2:]}]",
                 _rate(res["w2_train"]["numpy"]),
                 tcell("w2_train", ch.get("w2_torch", "")) + (f" [{ch['w2_torch'][-2:]}]" if use_torch else ""),
                 f"{ratios['w2_vs_numpy']:.2f}x", f"{ratios['w2_vs_torch']:.2f}x" if use_torch else "-"])
    o1 = "learnd_2t" if ch["w2_learnd"] == "learnd_1t" else "learnd_1t"
    other = ("torch_2t" if ch.get("w2_torch") == "torch_1t" else "torch_1t") if use_torch else None
    rows.append(["  (other thread setting)", _rate(res["w2_train"][o1]) + f" [{o1[-2:]}]", "",
                 _rate(res["w2_train"][other]) + f" [{other[-2:]}]" if use_torch else "", "", ""])
    rows.append(["W2 train us/step", f"{res['w2_train']['learnd']['us_per_iteration']:,.1f}",
                 f"{res['w2_train']['numpy']['us_per_iteration']:,.1f}",
                 f"{res['w2_train'][ch['w2_torch']]['us_per_iteration']:,.1f}" if use_torch else "-", "", ""])
    lat = res["w1_predict1"]
    tl = lambda k: f" [{k.split('_')[-1]}]"  # noqa: E731
    for q in ("p50", "p99"):
        rows.append([f"W1 predict 1 row {q} us", f"{lat['learnd'][q + '_us']:.1f}" + tl(ch["predict_learnd"]),
                     f"{lat['numpy'][q + '_us']:.1f}",
                     f"{lat['torch'][q + '_us']:.1f}" + tl(ch["predict_torch"]) if use_torch else "-",
                     f"{lat['learnd'][q + '_us'] / lat['numpy'][q + '_us']:.2f}x",
                     f"{lat['learnd'][q + '_us'] / lat['torch'][q + '_us']:.2f}x" if use_torch else "-"])
    if use_torch:
        o1 = "learnd_2t" if ch["predict_learnd"] == "learnd_1t" else "learnd_1t"
        o2 = "torch_2t" if ch["predict_torch"] == "torch_1t" else "torch_1t"
        rows.append(["  (other thread setting p50)", f"{lat[o1]['p50_us']:.1f}" + tl(o1), "",
                     f"{lat[o2]['p50_us']:.1f}" + tl(o2), "", ""])
    for q in ("p50", "p99"):
        rows.append([f"  serving_precision=half {q} us", f"{lat['learnd_half'][q + '_us']:.1f}", "",
                     "", "", f"{lat['learnd_half'][q + '_us'] / lat['torch'][q + '_us']:.2f}x" if use_torch else "-"])
    p = res["w1_predict1024"]
    rows.append(["W1 predict b=1024 samples/s", _rate(p["learnd"]), _rate(p["numpy"]),
                 _rate(p["torch"]) if use_torch else "-", f"{ratios['predict1024_vs_numpy']:.2f}x",
                 f"{ratios['predict1024_vs_torch']:.2f}x" if use_torch else "-"])

    widths = [max(len(str(r[i])) for r in rows + [[""] + cols]) for i in range(len(cols) + 1)]
    line = "  ".join(["".ljust(widths[0])] + [c.rjust(w) for c, w in zip(cols, widths[1:])])
    print()
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join([str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]))
    print()
    names = {"w1_vs_torch_fused": "W1 train vs PyTorch eager (fused Adam)",
             "w1_vs_gemm_bound": "W1 train vs GEMM-only bound",
             "w2_vs_torch": "W2 train vs PyTorch eager (best threads)",
             "predict_p50_vs_torch": "one-sample predict p50 vs PyTorch",
             "predict_half_p50_vs_torch": "  the same, serving_precision=half"}
    print("targets (ratio = median of per-round paired ratios -- for latency, of the rounds' p50s -- over "
          "rounds where both sides were quiet;\n 'best' = ratio of each side's best round):")
    for key, label in names.items():
        t = out["targets"].get(key)
        if t is None:
            print(f"  {label:<44} -       (torch not available)")
            continue
        b = t.get("best_rounds_value")
        bs = f"(best {b:5.2f}x)" if b is not None else ""
        r = t.get("rounds_used")
        n = (f"n={r}" if r > 0 else f"n={-r}!") if r else "pooled"
        print(f"  {label:<44} {t['value']:6.2f}x {n:<6} {bs}  target {t['target']:<7} "
              f"{'met' if t['met'] else 'NOT met'}")
    eq = out["equivalence_check"]
    bad = [k for k, v in eq.items() if not v["ok"]]
    print(f"equivalence check (same init, dropout off): {'all agree' if not bad else 'DISAGREE: ' + ', '.join(bad)}"
          f"; run took {out['elapsed_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
