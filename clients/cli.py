"""The `learnd` command line.  Only this module maps errors to exit codes."""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def _serve(args):
    from daemon import logs
    from daemon.config import load
    from daemon.errors import ConfigError, StartupError
    from daemon.server import Server

    flags = {"ingest": args.ingest, "predict": args.predict, "control": args.control,
             "metrics": args.metrics, "state_dir": args.state_dir, "batch_size": args.batch_size,
             "log_json": True if args.log_json else None, "log_level": args.log_level,
             "wal": False if args.no_wal else None}
    model = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"learnd serve: --set takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        model[key] = _parse_value(value)
    flags["model"] = model
    try:
        config = load(args.config, flags=flags)
    except ConfigError as exc:
        print(f"learnd serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(config.log_json, config.log_level)
    try:
        return Server(config).run()
    except StartupError as exc:
        print(f"learnd serve: {exc}", file=sys.stderr)
        return exc.exit_code


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


def build_parser():
    parser = argparse.ArgumentParser(prog="learnd", description="Train a neural network online "
                                     "from ZeroMQ streams and serve it while it learns.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML file (daemon keys at top level, model keys in [model])")
    serve.add_argument("--ingest", help="ingest ROUTER address (default tcp://127.0.0.1:5555)")
    serve.add_argument("--predict", help="predict ROUTER address (default tcp://127.0.0.1:5556)")
    serve.add_argument("--control", help="control ROUTER address (default tcp://127.0.0.1:5557)")
    serve.add_argument("--metrics", help="metrics HTTP HOST:PORT (default 127.0.0.1:9500)")
    serve.add_argument("--state-dir", help="checkpoints and write-ahead log (default ./learnd-state)")
    serve.add_argument("--batch-size", type=int, help="rows per training step (default 64)")
    serve.add_argument("--no-wal", action="store_true", help="acknowledge without the write-ahead log")
    serve.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a model setting, e.g. --set hidden=[64,64] --set lr=0.01")
    serve.set_defaults(func=_serve)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
