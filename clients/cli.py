"""The `learnd` command line.  Only this module maps errors to exit codes.

Exit codes of the client commands: 0 done; 1 the daemon refused some batches or
requests (or refused this client's CURVE key); 2 usage, config, key-file or input-file
errors; 3 the daemon did not answer; 130 interrupted (after flushing what was sent).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A command line that cannot be acted on (exit code 2)."""


def _parse_value(text):
    """A command-line value read as a TOML value (numbers, bools, lists), else a string."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _key_values(items, command):
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {item!r}")
        out[key] = _parse_value(value)
    return out


# -- serve -------------------------------------------------------------------------------
def cmd_serve(args):
    from learnd.daemon import logs
    from learnd.daemon.config import DAEMON_KEYS, load
    from learnd.daemon.errors import ConfigError, StartupError
    from learnd.daemon.supervisor.server import Server
    from learnd.daemon.supervisor.tree import Supervisor

    try:
        settings = _key_values(args.set, "serve")
        # --set takes daemon settings (eval_interval_s=1) and model settings (hidden=[64]).
        model = {k: v for k, v in settings.items() if k not in DAEMON_KEYS}
        flags = {k: v for k, v in settings.items() if k in DAEMON_KEYS}
        flags.update({k: v for k, v in {
            "ingest": args.ingest, "predict": args.predict, "control": args.control,
            "snapshots": args.snapshots, "metrics": args.metrics, "state_dir": args.state_dir, "batch_size": args.batch_size,
            "log_json": True if args.log_json else None, "log_level": args.log_level,
            "wal": False if args.no_wal else None}.items() if v is not None})
        config = load(args.config, flags={**flags, "model": model})
    except ConfigError as exc:
        print(f"learnd serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(config.log_json, config.log_level)
    try:
        if args.data_parallel:
            return _serve_rank(config)
        return (Server if args.single_process else Supervisor)(config).run()
    except StartupError as exc:
        print(f"learnd serve: {exc}", file=sys.stderr)
        return exc.exit_code


def _serve_rank(config):
    """One rank of `mpiexec -n K learnd serve --data-parallel`: a single-process daemon
    whose steps are the group's (docs/scaling.md)."""
    from learnd.daemon.errors import ConfigError, StartupError
    from learnd.daemon.supervisor.server import Server
    from learnd.daemon.training import parallel

    group = parallel.connect()
    code = 1
    try:
        code = Server(parallel.check_config(parallel.for_rank(config, group.rank)), group=group).run()
    except ConfigError as exc:
        print(f"learnd serve: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except StartupError as exc:
        print(f"learnd serve: {exc}", file=sys.stderr)
        code = exc.exit_code
    finally:
        if code != 0:
            # The other ranks would wait for this one at their next round for ever (and
            # MPI's own finalization with them): a rank that fails ends the whole job.
            sys.stderr.flush()
            group.abort(code)
    return code


def cmd_follow(args):
    from learnd.daemon import logs
    from learnd.daemon.config import DAEMON_KEYS, load
    from learnd.daemon.errors import ConfigError, StartupError
    from learnd.daemon.serving.follower import Follower

    try:
        settings = _key_values(args.set, "follow")
        unknown = sorted(k for k in settings if k not in DAEMON_KEYS)
        if unknown:
            raise ConfigError(f"a follower takes daemon settings only, not {unknown}")
        flags = {**settings, **{k: v for k, v in {
            "predict": args.predict, "control": args.control, "metrics": args.metrics,
            "follower_server_key": args.server_key, "follower_client_key": args.client_key,
            "log_json": True if args.log_json else None, "log_level": args.log_level}.items() if v is not None}}
        config = load(args.config, flags=flags)
    except ConfigError as exc:
        print(f"learnd follow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(config.log_json, config.log_level)
    try:
        return Follower(config, args.source, endpoints_file=args.endpoints).run()
    except StartupError as exc:
        print(f"learnd follow: {exc}", file=sys.stderr)
        return exc.exit_code


# -- keys --------------------------------------------------------------------------------------
KEY_LAYOUT = {"server": "server", "client": "clients", "control": "control-clients"}


def cmd_keys(args):
    from .keys import create_keypair

    wanted = ([("server", "server")] if args.server else []) + \
        [("client", n) for n in args.client or []] + [("control", n) for n in args.control or []]
    if not wanted:
        raise UsageError("say which key pairs to make: --server, --client NAME, --control NAME")
    try:
        for kind, name in wanted:
            public, secret = create_keypair(os.path.join(args.dir, KEY_LAYOUT[kind]), name)
            print(f"{kind:<8} {public}  (secret: {secret}, mode 0600)")
    except OSError as exc:   # a KeyFileError reaches main(), which maps it to a usage error
        raise UsageError(str(exc)) from None
    return EXIT_OK


def _curve(args):
    """The client classes' CURVE keyword arguments from --server-key / --client-key."""
    if (args.server_key is None) != (args.client_key is None):
        raise UsageError("CURVE needs both --server-key (the daemon's server.key) and --client-key "
                         "(this client's NAME.key_secret)")
    if args.server_key is None:
        return {}
    return {"curve_server_key": args.server_key, "curve_client_cert": args.client_key}


def _control(args, timeout=None):
    """A Control client for the command's --control address and CURVE keys."""
    from .client import Control

    return Control(args.control, timeout=args.timeout if timeout is None else timeout, **_curve(args))


# -- client commands -------------------------------------------------------------------------
def cmd_replay(args):
    from tqdm import tqdm

    from .client import Producer
    from .datafiles import load_rows

    X, y = load_rows(args.file, label=args.label, labels_path=args.labels)
    total = len(X) * args.passes
    interrupted = False
    with Producer(args.ingest, producer_id=args.producer, window=args.window,
                  timeout=args.timeout, **_curve(args)) as prod:
        bar = tqdm(total=total, unit="rows", desc="replay", disable=args.quiet,
                   dynamic_ncols=True, smoothing=0.1)
        t0 = time.monotonic()
        sent = 0
        try:
            for _ in range(args.passes):
                for i in range(0, len(X), args.batch):
                    xb, yb = X[i:i + args.batch], y[i:i + args.batch]
                    if args.rate:
                        # Hold the average at --rate rows/s: sleep until this batch is due.
                        delay = t0 + sent / args.rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    prod.send(xb, yb, split=args.split)
                    sent += len(xb)
                    bar.update(len(xb))
                    bar.set_postfix(acked=prod.acked_rows, refused=len(prod.rejected), refresh=False)
        except KeyboardInterrupt:
            interrupted = True
        prod.flush()
        bar.set_postfix(acked=prod.acked_rows, refused=len(prod.rejected))
        bar.close()
    elapsed = time.monotonic() - t0
    print(f"sent {sent} rows in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f} rows/s); "
          f"acknowledged {prod.acked_rows}, duplicates {prod.duplicates}, refused batches {len(prod.rejected)}",
          file=sys.stderr)
    for r in prod.rejected[:5]:
        print(f"  seq {r.seq}: {r.code}: {r.message}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_REFUSED if prod.rejected else EXIT_OK


def cmd_predict(args):
    import numpy as np

    from .client import Predictor
    from .datafiles import load_rows, read_json_lines

    if args.file == "-":
        X = read_json_lines(sys.stdin)
    else:
        X, _ = load_rows(args.file, label=args.label, need_labels=False)
    with Predictor(args.predict, timeout=args.timeout, **_curve(args)) as p:
        batches = [X[i:i + args.batch] for i in range(0, len(X), args.batch)]
        results = p.predict_many(batches, output=args.output)
    for r in results:
        for row in r.y:
            value = row.tolist() if isinstance(row, np.ndarray) else row.item()
            print(json.dumps({"y": value, "model_version": r.model_version}))
    return EXIT_OK


STATUS_ORDER = ("role", "from", "state", "trainer_version", "lag_versions", "lag_seconds",
                "task", "input_dim", "n_outputs", "model_version", "samples_trained", "batches_trained",
                "nonfinite_steps", "queue_depth", "learning_rate", "train_loss", "uptime_seconds", "ready",
                "wal", "last_checkpoint")


def cmd_status(args):
    with _control(args) as c:
        status = c.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    rows = [(k, status.get(k)) for k in STATUS_ORDER if k in status]
    r = status.get("replay")
    if r:
        state = "off" if not r["ratio"] else (f"ratio {r['ratio']}, recency {_fmt(r['recency'])} rows"
                                              if r["recency"] else f"ratio {r['ratio']}, uniform")
        rows.append(("replay", f"{r['steps']} steps on recent rows ({state}; {r['rows']} of "
                               f"{r['capacity']} rows kept, {r['pending']} steps pending)"))
    search = status.get("search")
    if search:
        rows.append(("population", f"{search['members']} members ({search['strategy']}), champion member "
                                   f"{search['champion']}, serving {search['serve']}; learnd search for the board"))
    for split, figures in (status.get("evaluation") or {}).items():
        rows.append((f"eval[{split}]", ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())))
    rows.extend(_evaluation_rows(status))
    for name, address in (status.get("bound") or {}).items():
        rows.append((f"{name} at", address))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {_fmt(v)}")
    return EXIT_OK


def cmd_search(args):
    """The population's leaderboard: one line per member, best first."""
    with _control(args) as c:
        status = c.status()
    if args.json:
        print(json.dumps({"members": status.get("members"), "search": status.get("search")}, indent=2))
        return EXIT_OK
    search, members = status.get("search"), status.get("members")
    if not search:
        print("no population: this daemon trains one model (set search_members >= 2 in a new state dir)")
        return EXIT_OK
    print(f"{search['members']} members, strategy {search['strategy']}, metric {search['metric']}, "
          f"serving {search['serve']}" + (f" (top {search['ensemble_k']}: {search['served']})"
                                          if search["serve"] == "ensemble" else f" (member {search['champion']})")
          + f"; {search['decisions']} decisions in {search['evaluations']} evaluations")
    print(format_leaderboard(members))
    return EXIT_OK


def cmd_errors(args):
    """Error analysis of the held-out splits: confusion, errors by tag, likely mislabeled rows."""
    from .errors_view import format_errors

    with _control(args) as c:
        analysis = c.status().get("error_analysis") or {}
    if args.json:
        print(json.dumps(analysis, indent=2))
        return EXIT_OK
    print(format_errors(analysis, args.split, args.suspects))
    return EXIT_OK


def format_leaderboard(members):
    """The leaderboard as a text table (the champion marked with *)."""
    names = sorted({k for row in members for k in row["draw"]})
    head = ["", "member", "rank", "state", "rows", "age", "figure", "+-se", "dev", *names]
    lines = [head]
    for row in members:
        dev = row.get("dev") or {}
        lines.append(["*" if row["champion"] else "", str(row["member"]), _fmt(row["rank"]), row["state"],
                      str(row["rows_trained"]), str(row["age_rows"]), _fmt(row["value"]),
                      _fmt(row["standard_error"]), _fmt(dev.get("value")),
                      *[_fmt(row["draw"].get(n)) for n in names]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _evaluation_rows(status):
    """(label, text) rows for the diagnosis, progressive validation, early stopping and
    the satisficing metric of a status reply."""
    rows = []
    d = status.get("diagnosis")
    if d:
        rows.extend(_diagnosis_rows(d))
    p = status.get("progressive")
    if p and p.get("rows"):
        rows.append(("progressive", ", ".join(f"{k} {_fmt(v)}" for k, v in p.items())))
    e = status.get("early_stopping")
    if e:
        state = ("frozen" if e["frozen"] else "serving best" if e["serving_best"]
                 else "stopped" if e["stopped"] else "watching" if e["patience"] else "off")
        best = (f"best dev {e['metric']} {_fmt(e['best_dev'])} at version {e['best_version']}, "
                f"{e['evaluations_since_best']} evaluations since" if e["best_version"] is not None
                else "no best dev figure yet")
        rows.append(("early stopping", f"{state}: {best} (patience {e['patience']}, action {e['action']})"))
    dr = status.get("drift")
    if dr and dr["detector"] != "off":
        last = dr["last"]
        seen = (f"last at row {last['row']} of the progressive error ({last['samples_trained']} rows trained), "
                f"action {last['action']}" if last else "none yet")
        rows.append(("drift", f"{dr['detector']}: {dr['detections']} drifts in {dr['rows_watched']} rows, {seen}; "
                              f"on_drift {dr['on_drift']}"))
    sat = status.get("satisficing")
    if sat:
        bound = f"{_fmt(sat['bound_seconds'] * 1e3)} ms"
        if sat["met"] is None:
            rows.append(("satisficing", f"predict p99 <= {bound}: UNKNOWN (no predict request answered yet)"))
        else:
            rows.append(("satisficing", f"predict p99 {_fmt(sat['p99_seconds'] * 1e3)} ms <= {bound} over "
                                        f"the last {sat.get('requests')} answered requests: "
                                        f"{'MET' if sat['met'] else 'NOT MET'}"))
    return rows


def _diagnosis_rows(d):
    """The verdict, the gaps that have a figure, those that have none and why, the recipe."""
    if d["figure"] is None:
        rows = [("diagnosis", f"{d['verdict'].upper()} (no figures yet: the task is not known)")]
    else:
        rows = [("diagnosis", f"{d['verdict'].upper()} ({d['figure']} gaps over Bayes proxy "
                              f"{_fmt(d['bayes_error'])}, counted above tolerance {_fmt(d['tolerance'])} "
                              f"and {_fmt(d.get('noise_sigmas'))} standard errors)")]
    se = d.get("gap_errors") or {}
    measured = [f"{k} {_fmt(v)}" + (f" ± {se[k]:.2g}" if se.get(k) is not None else "")
                for k, v in d["gaps"].items() if v is not None]
    if measured:
        rows.append(("gaps", ", ".join(measured)))
    by_reason = {}
    for gap, reason in (d.get("unmeasured") or {}).items():
        by_reason.setdefault(reason, []).append(gap)
    for i, (reason, gaps) in enumerate(by_reason.items()):
        rows.append(("not measured" if i == 0 else "", f"{', '.join(gaps)}: {reason}"))
    rows.append(("what to do", d["recipe"]))
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)


def cmd_set(args):
    settings = _key_values(args.settings, "set")
    with _control(args) as c:
        print(json.dumps(c.set(**settings)))
    return EXIT_OK


def cmd_checkpoint(args):
    with _control(args) as c:
        result = c.checkpoint()
    print(f"checkpoint {result['path']} ({result['batches_trained']} batches trained)")
    return EXIT_OK


def cmd_gradcheck(args):
    with _control(args, timeout=max(args.timeout, 60.0)) as c:
        report = c.gradcheck()
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"gradient check (eps {report['eps']:g}): overall {report['overall']:.3e}  {report['verdict']}")
    for name, value in report["per_param"].items():
        print(f"  {name:<14} {value:.3e}  ({report['checked'][name]} entries)")
    return EXIT_OK if report["verdict"] != "BUG" else EXIT_REFUSED


def cmd_rollback(args):
    with _control(args) as c:
        r = c.rollback()
    print(f"rolled back to the best model (version {r['best_version']}, dev {r['metric']} "
          f"{_fmt(r['best_dev'])}); now serving version {r['model_version']}")
    return EXIT_OK


def cmd_freeze(args):
    with _control(args) as c:
        r = c.freeze() if args.command == "freeze" else c.unfreeze()
    print("training is frozen" if r["frozen"] else "training goes on")
    return EXIT_OK


def cmd_report(args):
    from .report import ReportError, write_report

    try:
        path = write_report(args.state_dir, args.output)
    except ReportError as exc:
        print(f"learnd report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


def cmd_demo(args):
    from .demo import run_demo

    return run_demo(passes=args.passes, quiet=args.quiet)


# -- parser ------------------------------------------------------------------------------------
def build_parser():
    from .client import DEFAULT_CONTROL, DEFAULT_INGEST, DEFAULT_PREDICT
    from .protocol import TRAIN_SPLITS

    parser = argparse.ArgumentParser(prog="learnd", description="Train a neural network online "
                                     "from ZeroMQ streams and serve it while it learns.")
    sub = parser.add_subparsers(dest="command", required=True)

    def client(name, help_text, func, sockets):
        p = sub.add_parser(name, help=help_text)
        defaults = {"ingest": DEFAULT_INGEST, "predict": DEFAULT_PREDICT, "control": DEFAULT_CONTROL}
        for s in ("ingest", "predict", "control"):
            p.add_argument(f"--{s}", default=defaults[s],
                           help=f"the daemon's {s} address" + ("" if s in sockets else " (unused here)"))
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
        p.add_argument("--server-key", metavar="FILE",
                       help="CURVE: the daemon's public key (server.key, or the 40-character key)")
        p.add_argument("--client-key", metavar="FILE", help="CURVE: this client's NAME.key_secret")
        p.set_defaults(func=func)
        return p

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML file (daemon keys at top level, model keys in [model])")
    serve.add_argument("--ingest", help="ingest ROUTER address (default tcp://127.0.0.1:5555)")
    serve.add_argument("--predict", help="predict ROUTER address (default tcp://127.0.0.1:5556)")
    serve.add_argument("--control", help="control ROUTER address (default tcp://127.0.0.1:5557)")
    serve.add_argument("--snapshots", help="snapshots XPUB address, for followers "
                       "(default tcp://127.0.0.1:5558)")
    serve.add_argument("--metrics", help="metrics HTTP HOST:PORT (default 127.0.0.1:9500)")
    serve.add_argument("--state-dir", help="checkpoints and write-ahead log (default ./learnd-state)")
    serve.add_argument("--batch-size", type=int, help="rows per training step (default 64)")
    serve.add_argument("--no-wal", action="store_true", help="acknowledge without the write-ahead log")
    serve.add_argument("--single-process", action="store_true",
                       help="run every stage as a thread of one process (debugging, the smallest hosts)")
    serve.add_argument("--data-parallel", action="store_true",
                       help="under mpiexec -n K: rank r trains with the others on its own stream, ports "
                            "+ 10 r, state in STATE_DIR/rank-r; each rank is one process (docs/scaling.md)")
    serve.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a setting: model (--set hidden=[64,64] --set lr=0.01) or daemon "
                            "(--set eval_interval_s=1); see docs/configuration.md")
    serve.set_defaults(func=cmd_serve)

    follow = sub.add_parser("follow", help="serve predictions from a trainer's published snapshots "
                            "(a stateless replica; docs/scaling.md)")
    follow.add_argument("--from", dest="source", required=True, metavar="ADDR",
                        help="the trainer's snapshots address, e.g. tcp://trainer:5558")
    follow.add_argument("--config", help="TOML file: the predict, limit, CURVE and follower_* settings apply")
    follow.add_argument("--predict", help="predict ROUTER address (default tcp://127.0.0.1:5556)")
    follow.add_argument("--control", help="control ROUTER address, for status (default tcp://127.0.0.1:5557)")
    follow.add_argument("--metrics", help="metrics HTTP HOST:PORT (default 127.0.0.1:9500)")
    follow.add_argument("--server-key", metavar="FILE",
                        help="CURVE: the trainer's public key (server.key, or the 40-character key)")
    follow.add_argument("--client-key", metavar="FILE", help="CURVE: this follower's NAME.key_secret")
    follow.add_argument("--endpoints", metavar="FILE", help="write the bound addresses here (JSON) once serving")
    follow.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    follow.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    follow.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a daemon setting (--set follower_max_lag_s=30); see docs/configuration.md")
    follow.set_defaults(func=cmd_follow)

    replay = client("replay", "stream a data file into the daemon", cmd_replay, ("ingest",))
    replay.add_argument("file", help=".npz (X, y), .csv (header row) or .npy (with --labels)")
    replay.add_argument("--label", help="csv label column, by name or index (default: the last)")
    replay.add_argument("--labels", help=".npy of labels for an .npy of inputs")
    replay.add_argument("--batch", type=int, default=64, help="rows per message (default 64)")
    replay.add_argument("--rate", type=float, default=0.0, help="rows per second (default: as fast as acked)")
    replay.add_argument("--passes", type=int, default=1, help="times through the file (default 1)")
    replay.add_argument("--split", default="auto", choices=TRAIN_SPLITS,
                        help="auto: the daemon divides the rows by their hash; the others send every "
                             "row there (default auto)")
    replay.add_argument("--producer", help="producer id (default: host-pid-random)")
    replay.add_argument("--window", type=int, default=16, help="batches in flight before waiting for acks")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")

    predict = client("predict", "predictions for a file or JSON lines on stdin", cmd_predict, ("predict",))
    predict.add_argument("file", help=".npz, .csv, .npy, or - for JSON lines on stdin")
    predict.add_argument("--label", help="a csv column to leave out (labels), by name or index")
    predict.add_argument("--output", default="label", choices=("label", "proba", "value"))
    predict.add_argument("--batch", type=int, default=256, help="rows per request")

    status = client("status", "what the daemon is doing", cmd_status, ("control",))
    status.add_argument("--json", action="store_true")
    search = client("search", "the population's leaderboard (search_members >= 2)", cmd_search, ("control",))
    search.add_argument("--json", action="store_true")
    errors = client("errors", "error analysis of held-out rows: confusion, errors by tag, likely "
                              "mislabeled rows", cmd_errors, ("control",))
    errors.add_argument("--split", choices=("dev", "test", "train_dev"), help="one split (default: every one held)")
    errors.add_argument("--suspects", action="store_true", help="the rows whose given label is least likely")
    errors.add_argument("--json", action="store_true")
    setp = client("set", "change live settings (lr, l2, batch_size, ...)", cmd_set, ("control",))
    setp.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    client("checkpoint", "write a checkpoint now", cmd_checkpoint, ("control",))
    grad = client("gradcheck", "check the model's gradients on recent rows", cmd_gradcheck, ("control",))
    grad.add_argument("--json", action="store_true")

    client("rollback", "serve and train on from the best dev model", cmd_rollback, ("control",))
    client("freeze", "stop training (serving and evaluation go on)", cmd_freeze, ("control",))
    client("unfreeze", "resume training", cmd_freeze, ("control",))
    keys = sub.add_parser("keys", help="make CURVE key pairs (docs/security.md)")
    keys.add_argument("dir", help="key directory: DIR/server, DIR/clients, DIR/control-clients")
    keys.add_argument("--server", action="store_true", help="the daemon's pair, DIR/server/server.key[_secret]")
    keys.add_argument("--client", action="append", metavar="NAME",
                      help="a client's pair, DIR/clients/NAME.key[_secret] (repeatable)")
    keys.add_argument("--control", action="append", metavar="NAME",
                      help="a control client's pair, DIR/control-clients/NAME.key[_secret] (repeatable)")
    keys.set_defaults(func=cmd_keys)

    report = sub.add_parser("report", help="PNG learning curves from a state dir's evaluation history")
    report.add_argument("--state-dir", default="learnd-state", help="the daemon's state dir (default ./learnd-state)")
    report.add_argument("--output", "-o", help="PNG path (default <state-dir>/learning-curves.png)")
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="start a daemon, stream digits into it while predicting, report")
    demo.add_argument("--passes", type=int, default=8, help="passes over the training rows")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    from .client import LearndError, Unreachable
    from .datafiles import DataFileError
    from .keys import KeyFileError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataFileError, UsageError, KeyFileError) as exc:
        print(f"learnd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LearndError as exc:
        print(f"learnd {args.command}: the daemon refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Unreachable as exc:
        hint = ("" if getattr(args, "server_key", None) else
                "; if the daemon requires CURVE, give --server-key and --client-key")
        print(f"learnd {args.command}: {exc}{hint}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output left (`learnd predict FILE | head`): stop quietly, as
        # other command-line tools do.  stdout is pointed at /dev/null so that the
        # interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
