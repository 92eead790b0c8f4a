"""Predict latency over ZeroMQ with the daemon idle (also with predict_spin_us) and while
it trains at full speed, against the bare pyzmq round trip carrying the same payload;
16 concurrent clients with and without dynamic batching; training throughput from
ingest alone and while serving; all in one run.

    python -m benchmarks.daemon [--seconds S] [--rounds R] [--spin-us US] [--json PATH]
                                [--single-process] [--no-wal]

The model is W1 (784-256-128-10, batch norm, keep_prob 0.8, Adam, L2 1e-4, batch 128).
The daemons run as process trees unless --single-process, with the write-ahead log on
unless --no-wal.  Each round also times the embedded engine training the same model on
the same batches in this process (one BLAS thread, as the daemon's trainer): the
daemon's training throughput is quoted as a ratio of it.  The whole tree's resident
memory is read from the metrics at the end.
Three daemons run side by side: plain, with dynamic batching, and spinning.  Rounds
interleave the measurements and medians are quoted, because this machine is shared and
noisy.  Training runs in a separate producer process, so the client that measures
latency is never slowed by the producer's own Python.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import numpy as np
import zmq

from benchmarks.harness import report
from learnd.clients.client import Control, Predictor, Producer
from learnd.clients.launch import start_daemon, stop_daemon

W1_ARGS = ["--set", "hidden=[256,128]", "--set", "keep_prob=0.8", "--set", "l2=0.0001",
           "--set", "batch_norm=true", "--batch-size", "128"]
DIM, CLASSES, BATCH = 784, 10, 128


def _echo_server(address_queue, stop):
    """The baseline: a ROUTER that answers each request with a 10-float reply."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    address_queue.put(f"tcp://127.0.0.1:{port}")
    reply = np.zeros(CLASSES, np.float32).tobytes()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            frames = sock.recv_multipart(copy=False)
            sock.send_multipart([frames[0], b"", frames[1].bytes, reply], copy=False)
    sock.close(0)
    ctx.term()


def _produce(address, stop, counter):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((BATCH * 64, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(X))
    with Producer(address, producer_id="bench", window=32, timeout=30) as prod:
        k = 0
        while not stop.is_set():
            i = (k % 64) * BATCH
            prod.send(X[i:i + BATCH], y[i:i + BATCH])
            k += 1
        counter.value = k


def _bare_latencies(address, x, seconds):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    import msgpack
    header = msgpack.packb({"v": 1, "op": "predict", "arrays": [{"name": "x", "dtype": "<f4", "shape": [1, DIM]}]})
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        sock.send_multipart([b"", header, x], copy=False)
        sock.recv_multipart()
        out.append(time.perf_counter() - t0)
    sock.close(0)
    ctx.term()
    return out


def _client_process(address, x, seconds, start, results):
    """One of the concurrent clients: 1-row requests back to back for `seconds`."""
    pred = Predictor(address, timeout=30)
    pred.predict(x)
    start.wait()
    results.put(_predict_latencies(pred, x, seconds))
    pred.close()


def _concurrent(address, x, seconds, n_clients):
    """p50/p99 latency and total requests/s of n_clients processes asking at once."""
    start, results = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_client_process, args=(address, x, seconds, start, results), daemon=True)
             for _ in range(n_clients)]
    for p in procs:
        p.start()
    time.sleep(1.0)                      # every client connected and warmed
    start.set()
    lat = [results.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    flat = np.concatenate([np.asarray(r) for r in lat])
    return {"p50_us": float(np.percentile(flat, 50) * 1e6), "p99_us": float(np.percentile(flat, 99) * 1e6),
            "requests_per_s": float(len(flat) / seconds), "requests": int(len(flat))}


def _ready_seconds(extra_env=None):
    """Seconds from starting `learnd serve` (warm Numba cache) to its first prediction,
    the first training batch included."""
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory(prefix="learnd-bench-") as state_dir:
        t0 = time.monotonic()
        proc, ends, log = start_daemon(state_dir, W1_ARGS, extra_env)
        try:
            with Producer(ends["ingest"], producer_id="ready") as prod:
                prod.send(rng.standard_normal((BATCH, DIM)).astype(np.float32), rng.integers(0, CLASSES, BATCH))
            with Predictor(ends["predict"], timeout=1, retries=0) as pred:
                x = rng.standard_normal((1, DIM)).astype(np.float32)
                while time.monotonic() - t0 < 120:
                    try:
                        pred.predict(x)
                        return time.monotonic() - t0
                    except Exception:
                        time.sleep(0.01)
            return float("nan")
        finally:
            stop_daemon(proc, log)


def _embedded_samples_per_s(seconds):
    """W1 trained embedded, batch after batch, for `seconds`: rows per second."""
    import scipy.linalg.cython_blas  # noqa: F401  (load Numba's BLAS before limiting it)
    from threadpoolctl import threadpool_limits

    from learnd.engine import Model
    rng = np.random.default_rng(1)
    X = rng.standard_normal((BATCH * 64, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(X))
    with threadpool_limits(1, user_api="blas"):
        model = Model(hidden=(256, 128), task="multiclass", n_outputs=CLASSES, keep_prob=0.8,
                      l2=1e-4, batch_norm=True)
        model.partial_fit(X[:BATCH], y[:BATCH])
        rows, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            i = (rows // BATCH % 64) * BATCH
            model.partial_fit(X[i:i + BATCH], y[i:i + BATCH])
            rows += BATCH
        return rows / (time.perf_counter() - t0)


def _tree_memory(metrics_url):
    """{role: resident bytes} and the sum, from the tree's learnd_process_resident_memory_bytes
    (the single process exports no such figure: empty)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    by_role = {}
    for family in text_string_to_metric_families(text):
        if family.name == "learnd_process_resident_memory_bytes":
            by_role.update({s.labels["role"]: s.value for s in family.samples})
    return {"by_role": by_role, "total": sum(by_role.values())}


def _predict_latencies(pred, x, seconds):
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        pred.predict(x)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--batch-window-us", type=float, default=500.0,
                        help="predict_batch_window_us of the batching daemon (default 500)")
    parser.add_argument("--spin-us", type=float, default=1000.0,
                        help="predict_spin_us of the spinning daemon (default 1000)")
    parser.add_argument("--single-process", action="store_true", help="the threaded daemon, not the tree")
    parser.add_argument("--no-wal", action="store_true", help="without the write-ahead log")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    global W1_ARGS
    W1_ARGS = W1_ARGS + (["--single-process"] if args.single_process else []) + (["--no-wal"] if args.no_wal else [])
    return report(run(args), _print, args.json)


def run(args):
    x = np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32)
    stop_echo = mp.Event()
    q = mp.Queue()
    echo = mp.Process(target=_echo_server, args=(q, stop_echo), daemon=True)
    echo.start()
    echo_address = q.get(timeout=30)
    figures = {"ready_seconds": _ready_seconds()}
    try:
        with tempfile.TemporaryDirectory(prefix="learnd-bench-") as state_dir, \
                tempfile.TemporaryDirectory(prefix="learnd-bench-") as batching_dir, \
                tempfile.TemporaryDirectory(prefix="learnd-bench-") as spinning_dir:
            proc, ends, log = start_daemon(state_dir, W1_ARGS)
            bproc, bends, blog = start_daemon(
                batching_dir, W1_ARGS, {"LEARND_PREDICT_BATCH_WINDOW_US": str(args.batch_window_us)})
            sproc, sends, slog = start_daemon(spinning_dir, W1_ARGS, {"LEARND_PREDICT_SPIN_US": str(args.spin_us)})
            try:
                figures.update(_measure(ends, bends, sends, echo_address, x, args))
            finally:
                for p, lg in ((proc, log), (bproc, blog), (sproc, slog)):
                    stop_daemon(p, lg)
    finally:
        stop_echo.set()
        echo.join(5)
    return figures


def _measure(ends, bends, sends, echo_address, x, args):
    rng = np.random.default_rng(2)
    for e in (ends, bends, sends):
        with Producer(e["ingest"], producer_id="warm") as prod:   # create the model
            prod.send(rng.standard_normal((BATCH, DIM)).astype(np.float32), rng.integers(0, CLASSES, BATCH))
    control = Control(ends["control"])
    pred = Predictor(ends["predict"])
    spinning = Predictor(sends["predict"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Control(e["control"]).status()["batches_trained"] < 1
                                              for e in (ends, bends, sends)):
        time.sleep(0.05)
    concurrent = {"unbatched": [], "batched": []}
    runs = {"bare": [], "idle": [], "idle_spinning": [], "training": []}
    throughput, alone, embedded = [], [], []
    for _ in range(args.rounds):
        embedded.append(_embedded_samples_per_s(args.seconds))
        runs["bare"].append(_bare_latencies(echo_address, x, args.seconds))
        runs["idle"].append(_predict_latencies(pred, x, args.seconds))
        runs["idle_spinning"].append(_predict_latencies(spinning, x, args.seconds))
        concurrent["unbatched"].append(_concurrent(ends["predict"], x, args.seconds, args.clients))
        concurrent["batched"].append(_concurrent(bends["predict"], x, args.seconds, args.clients))
        stop, counter = mp.Event(), mp.Value("q", 0)
        producer = mp.Process(target=_produce, args=(ends["ingest"], stop, counter), daemon=True)
        producer.start()
        time.sleep(1.0)                                  # let training reach full speed
        # Ingest with training on and nothing else asked of the daemon: its training
        # throughput, comparable with the embedded engine's.
        t0, s0 = time.monotonic(), control.status()["samples_trained"]
        time.sleep(args.seconds)
        s1, t1 = control.status()["samples_trained"], time.monotonic()
        alone.append((s1 - s0) / (t1 - t0))
        # The same while a client asks for one-row predictions as fast as it can.
        t0, s0 = time.monotonic(), control.status()["samples_trained"]
        runs["training"].append(_predict_latencies(pred, x, args.seconds))
        s1, t1 = control.status()["samples_trained"], time.monotonic()
        throughput.append((s1 - s0) / (t1 - t0))
        stop.set()
        producer.join(60)
    pred.close()
    spinning.close()
    control.close()
    memory = _tree_memory(ends["metrics"])

    def stats(rounds):
        p50 = float(np.median([np.percentile(r, 50) for r in rounds]) * 1e6)
        p99 = float(np.median([np.percentile(r, 99) for r in rounds]) * 1e6)
        return {"p50_us": p50, "p99_us": p99, "requests": int(sum(len(r) for r in rounds))}

    out = {name: stats(r) for name, r in runs.items()}
    out["training_samples_per_s"] = float(np.median(throughput))
    out["ingest_training_samples_per_s"] = float(np.median(alone))
    out["embedded_samples_per_s"] = float(np.median(embedded))
    out["memory_bytes"] = memory
    out["mode"] = "single-process" if args.single_process else "tree"
    out["wal"] = not args.no_wal
    for name, rs in concurrent.items():
        out[f"clients_{name}"] = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        out[f"clients_{name}"]["clients"] = args.clients
    out["clients_batched"]["batch_window_us"] = args.batch_window_us
    out["idle_spinning"]["spin_us"] = args.spin_us
    bare = out["bare"]
    out["ratios"] = {
        "training_vs_embedded": out["ingest_training_samples_per_s"] / out["embedded_samples_per_s"],
        "idle_p50_vs_bare": out["idle"]["p50_us"] / bare["p50_us"],
        "idle_p99_vs_bare": out["idle"]["p99_us"] / bare["p99_us"],
        "idle_spinning_p50_vs_bare": out["idle_spinning"]["p50_us"] / bare["p50_us"],
        "idle_spinning_p99_vs_bare": out["idle_spinning"]["p99_us"] / bare["p99_us"],
        "training_p50_vs_bare": out["training"]["p50_us"] / bare["p50_us"],
        "training_p99_vs_bare": out["training"]["p99_us"] / bare["p99_us"],
    }
    return out


def _print(f):
    print(f"{'one W1 sample over ZeroMQ':<34} {'p50 µs':>9} {'p99 µs':>9} {'requests':>9}")
    for name, label in (("bare", "bare pyzmq round trip (baseline)"), ("idle", "learnd, idle"),
                        ("idle_spinning", f"learnd, idle, spin {f['idle_spinning']['spin_us']:g} us"),
                        ("training", "learnd, training at full speed")):
        s = f[name]
        print(f"{label:<34} {s['p50_us']:>9.1f} {s['p99_us']:>9.1f} {s['requests']:>9}")
    for name in ("unbatched", "batched"):
        c = f[f"clients_{name}"]
        label = f"{c['clients']} clients, " + (f"batching {c['batch_window_us']:g} us" if name == "batched"
                                               else "no batching")
        print(f"{label:<34} {c['p50_us']:>9.1f} {c['p99_us']:>9.1f} {c['requests']:>9}"
              f"   {c['requests_per_s']:,.0f} requests/s")
    print(f"{f['mode']}, write-ahead log {'on' if f['wal'] else 'off'}")
    print(f"ingest with training on (rows trained/s): {f['ingest_training_samples_per_s']:,.0f} samples/s; "
          f"embedded engine, same model and batches: {f['embedded_samples_per_s']:,.0f} samples/s")
    mem = f["memory_bytes"]
    if mem["by_role"]:
        print("resident memory: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem["by_role"].items())
              + f"; total {mem['total'] / 2**20:.0f} MiB")
    else:
        print("resident memory: not in the single process's metrics")
    print(f"training throughput while serving: {f['training_samples_per_s']:,.0f} samples/s")
    print(f"ready to serve (start to first prediction, warm cache): {f['ready_seconds']:.2f} s")
    for k, v in f["ratios"].items():
        print(f"  {k:<24} {v:5.2f}x")


if __name__ == "__main__":
    main()
