"""Configuration: a TOML file, then LEARND_* environment variables, then flags.

The Config object only stores typed values; `load()` resolves them.  Daemon settings
are top-level keys of the file (LEARND_<KEY> in the environment); model settings live
in its [model] table (LEARND_MODEL_<KEY>), and are the keyword arguments of
engine.Model.  With no file at all the daemon runs on the defaults below, and the
first training batch fixes the input size and task.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from learnd.engine import EngineError
from learnd.engine.spec import ModelSpec

from learnd.daemon.errors import ConfigError


EARLY_STOPPING_ACTIONS = ("none", "serve_best", "freeze")
EARLY_STOPPING_METRICS = ("auto", "error", "loss")
PROGRESSIVE_MODES = ("step", "inference", "off")
DRIFT_DETECTORS = ("adwin", "off")
DRIFT_ACTIONS = ("none", "reset_optimizer", "boost_lr", "new_challengers")
SERVE_MODES = ("champion", "ensemble")


@dataclass
class Config:
    # Sockets (ZeroMQ endpoints) and the metrics HTTP server.
    ingest: str = "tcp://127.0.0.1:5555"
    predict: str = "tcp://127.0.0.1:5556"
    control: str = "tcp://127.0.0.1:5557"
    snapshots: str = "tcp://127.0.0.1:5558"    # XPUB: each published version, for followers
    metrics: str = "127.0.0.1:9500"
    state_dir: str = "learnd-state"
    # Training.
    batch_size: int = 64            # rows per optimizer step after re-batching
    batch_linger_ms: float = 50.0   # train a smaller batch (>= 2 rows) after this wait
    replay_rows: int = 4096         # recent training rows kept for replay steps
    replay_ratio: int = 16          # replay steps per new step, taken while no new data waits (0: off)
    replay_recency: float = 256.0   # mean age (rows) of the rows replay draws, weighted to the recent; 0: uniform
    queue_size: int = 256           # train messages held between ingest and the trainer
    max_queued_bytes: int = 0       # bytes of train messages ingest holds (ingest.budget); 0: sized for the machine
    publish_interval_ms: float = 10.0   # at most this long between snapshots for serving
    blas_threads: int = 1           # BLAS threads in the trainer; serving takes the other core
    predict_workers: int = 1        # predict worker processes of the process tree
    child_restart_limit: int = 5    # deaths of one child within child_restart_window_s stop the daemon
    child_restart_window_s: float = 60.0
    predict_batch_window_us: float = 0.0   # > 0: answer requests arriving this close together with one kernel call
    predict_batch_max_rows: int = 1024     # most rows in one such batch
    predict_spin_us: float = 0.0           # > 0: after an answer, poll without sleeping this long
    # State.
    checkpoint_interval_s: float = 60.0
    checkpoint_keep: int = 3
    wal: bool = True
    wal_fsync_ms: float = 5.0
    dedupe_window: int = 65536      # (producer, seq) pairs remembered per producer
    # Evaluation.
    eval_interval_s: float = 5.0
    eval_interval_samples: int = 0  # also evaluate after this many trained rows (0: by time only)
    reservoir_size: int = 2000      # rows kept per evaluated split
    dev_fraction: float = 0.02      # of rows sent with split "auto"; train gets the rest
    test_fraction: float = 0.02
    train_dev_fraction: float = 0.02    # of auto rows that would train, held out as train-dev
    bayes_error: float = 0.0        # human-level error: the proxy for Bayes error
    diagnosis_tolerance: float = 0.02   # a gap below this is no problem
    progressive_window: int = 10_000    # rows the test-then-train figures average over
    progressive_validation: str = "step"    # step (free, training mode) | inference (exact) | off
    # Error analysis (docs/error_analysis.md): tags per row, confusion, likely mislabeled rows.
    max_tags: int = 32              # distinct tag names the daemon keeps; more are counted as "(other)"
    max_suspects: int = 50          # likely mislabeled rows listed per split in status
    # Drift: a detector on the progressive (test-then-train) error stream.
    drift_detector: str = "adwin"   # adwin | off
    drift_delta: float = 0.002      # ADWIN's confidence: smaller, fewer false alarms and later detections
    on_drift: str = "none"          # none | reset_optimizer | boost_lr | new_challengers (a population's)
    drift_boost: float = 10.0       # boost_lr: the learning rate is multiplied by this, then decays back
    drift_boost_rows: int = 5000    # rows over which a boosted learning rate returns to its value
    # Early stopping on the dev split (patience counted in evaluations; 0: off).
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    early_stopping_min_dev_rows: int = 100  # fewer dev rows than this: no best is taken yet
    early_stopping_metric: str = "auto"     # auto (error, or loss for regression) | error | loss
    early_stopping_action: str = "none"     # none | serve_best | freeze
    # Population (DESIGN "Population"): search_members >= 2 trains that many models on the
    # stream, each with settings drawn from search_space, and serves the best.
    search_members: int = 0         # 0 or 1: one model
    search_space: dict = field(default_factory=dict)   # setting -> distribution; empty: the default space
    search_strategy: str = "random"     # random | halving | pbt
    search_metric: str = "progressive_error"    # progressive_error | progressive_loss | dev_error | dev_loss
    search_interval: int = 1        # evaluations between the population's decisions
    search_seed: int = 0
    search_min_rows: int = 512      # training rows a member scores before it is judged
    serve: str = "champion"         # champion | ensemble (the mean of the top ensemble_k members)
    ensemble_k: int = 3
    # Satisficing metric: predict latency p99 over the recent requests, against a bound.
    predict_p99_bound_ms: float = 10.0
    # Delayed labels: inputs kept by predict requests that carry ids.
    id_store_size: int = 100_000
    id_ttl_s: float = 3600.0
    # Practice (docs/practice.md).  Transfer: start the model from the trained one in this
    # checkpoint or model file (its trunk: input size, hidden layers, normalizer), with its
    # last reinit_layers layers afresh; [model] freeze_layers / unfreeze_after_rows say
    # what trains.  Evaluation also scores FGSM examples of each split at this epsilon.
    init_from: str = ""
    reinit_layers: int = 1
    adversarial_eval_epsilon: float = 0.0   # input units; 0: off
    # Limits on what a peer may send.
    max_header_bytes: int = 64 * 1024
    max_array_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = 256 * 1024 * 1024
    max_rows: int = 1_000_000
    # Largest |value| of an input or regression target; 0 turns the bound off.  One wild
    # row would otherwise skew the input normalizer's all-time statistics for good.
    max_abs_value: float = 1e15
    # CURVE (docs/security.md): with a server secret, every socket encrypts and admits only
    # the clients whose public certificates are in the allowlist directories.
    curve_server_secret: str = ""       # path of the daemon's NAME.key_secret; "" leaves CURVE off
    curve_clients_dir: str = ""         # directory of NAME.key files allowed on ingest and predict
    curve_control_clients_dir: str = ""     # the control socket's allowlist; "" means curve_clients_dir
    # Followers (`learnd follow`, docs/scaling.md).
    follower_max_lag_s: float = 60.0    # /readyz fails when the follower is this far behind its trainer
    follower_server_key: str = ""       # CURVE: the trainer's public key (server.key) for the snapshots socket
    follower_client_key: str = ""       # CURVE: the follower's own NAME.key_secret; both or neither
    # Logging.
    log_json: bool = False
    log_level: str = "info"
    # engine.Model keyword arguments; task/n_outputs/input_dim may be left to the first batch.
    model: dict = field(default_factory=dict)

    def validate(self):
        for f in dataclasses.fields(self):
            if f.type == "dict":
                continue
            value = getattr(self, f.name)
            kind = {"int": int, "float": float, "str": str, "bool": bool}[f.type]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"setting {f.name!r} must be {f.type}, got {value!r}")
            # `not value >= 0` also refuses NaN, for which every comparison is false: a NaN
            # linger or interval would silently never fire.
            if kind in (int, float) and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"setting {f.name!r} must be a finite number >= 0, got {value!r}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (batch norm needs 2 rows), got {self.batch_size}")
        if self.replay_rows < 2:
            raise ConfigError(f"replay_rows must be >= 2, got {self.replay_rows}")
        if self.predict_workers < 1:
            raise ConfigError(f"predict_workers must be >= 1, got {self.predict_workers}")
        if self.queue_size < 1 or self.checkpoint_keep < 1:
            raise ConfigError("queue_size and checkpoint_keep must be >= 1")
        if 0 < self.max_queued_bytes < 1024 * 1024:
            raise ConfigError(f"max_queued_bytes must be 0 (sized for the machine) or at least 1 MiB, "
                              f"got {self.max_queued_bytes}")
        if self.dev_fraction + self.test_fraction > 1.0:
            raise ConfigError(f"dev_fraction + test_fraction must be <= 1, got "
                              f"{self.dev_fraction} + {self.test_fraction}")
        if self.train_dev_fraction >= 1.0:
            raise ConfigError(f"train_dev_fraction must be < 1, got {self.train_dev_fraction}")
        if self.early_stopping_action not in EARLY_STOPPING_ACTIONS:
            raise ConfigError(f"early_stopping_action must be one of {', '.join(EARLY_STOPPING_ACTIONS)}, "
                              f"got {self.early_stopping_action!r}")
        if self.early_stopping_metric not in EARLY_STOPPING_METRICS:
            raise ConfigError(f"early_stopping_metric must be one of {', '.join(EARLY_STOPPING_METRICS)}, "
                              f"got {self.early_stopping_metric!r}")
        if self.progressive_validation not in PROGRESSIVE_MODES:
            raise ConfigError(f"progressive_validation must be one of {', '.join(PROGRESSIVE_MODES)}, "
                              f"got {self.progressive_validation!r}")
        if self.drift_detector not in DRIFT_DETECTORS:
            raise ConfigError(f"drift_detector must be one of {', '.join(DRIFT_DETECTORS)}, "
                              f"got {self.drift_detector!r}")
        if self.on_drift not in DRIFT_ACTIONS:
            raise ConfigError(f"on_drift must be one of {', '.join(DRIFT_ACTIONS)}, got {self.on_drift!r}")
        if self.on_drift == "new_challengers" and not self.searching:
            raise ConfigError("on_drift = new_challengers replaces a population's worst members: it needs "
                              "search_members >= 2")
        if not 0 < self.drift_delta < 1:
            raise ConfigError(f"drift_delta must be in (0, 1), got {self.drift_delta}")
        if self.drift_boost < 1:
            raise ConfigError(f"drift_boost must be >= 1, got {self.drift_boost}")
        self._validate_search()
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.curve_server_secret and not self.curve_clients_dir:
            raise ConfigError("curve_server_secret is set but curve_clients_dir is not: give the "
                              "directory of the client public keys (NAME.key) to allow")
        if not self.curve_server_secret and (self.curve_clients_dir or self.curve_control_clients_dir):
            raise ConfigError("curve_clients_dir / curve_control_clients_dir need curve_server_secret, "
                              "the daemon's secret key file")
        if bool(self.follower_server_key) != bool(self.follower_client_key):
            raise ConfigError("a follower uses CURVE with both follower_server_key (the trainer's server.key) "
                              "and follower_client_key (its own NAME.key_secret), or with neither")
        host, sep, port = self.metrics.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"metrics must be HOST:PORT, got {self.metrics!r}")
        if self.init_from:
            self._validate_transfer()
        # Without a task (the first batch gives it) check the rest against a task that
        # takes any number of outputs.
        try:
            ModelSpec(**{"task": "multilabel", "n_outputs": 1, **self.model}
                      if "task" not in self.model else self.model)
        except TypeError as exc:
            raise ConfigError(f"[model]: {exc}") from None
        except EngineError as exc:
            raise ConfigError(f"[model]: {exc}") from None
        return self

    def _validate_transfer(self):
        """Read the init_from model now, so a bad path or a mismatched [model] fails at
        start; the trunk's settings (input_dim among them, which the ingest checks
        against) become the [model] ones."""
        from learnd.daemon.training.transfer import load_source, trunk_settings

        if self.searching:
            raise ConfigError("init_from starts one model from a trained one; it cannot seed "
                              "a population (search_members >= 2)")
        source = load_source(self.init_from)
        n_layers = len(source.spec.hidden) + 1
        if not 0 <= self.reinit_layers <= n_layers:
            raise ConfigError(f"reinit_layers must be in 0..{n_layers} (the layers of {self.init_from}), "
                              f"got {self.reinit_layers}")
        for name, value in trunk_settings(source).items():
            given = self.model.get(name)
            if given is not None and (list(given) if isinstance(given, tuple) else given) != value:
                raise ConfigError(f"[model] {name} = {given!r}, but init_from {self.init_from} has "
                                  f"{value!r}; a transferred model keeps its trunk")
            self.model[name] = tuple(value) if isinstance(value, list) else value
        kept = n_layers - self.reinit_layers
        fresh = [l for l in self.model.get("freeze_layers", ()) if isinstance(l, int) and l > kept]
        if fresh:
            raise ConfigError(f"[model] freeze_layers {fresh} are reinitialized (reinit_layers = "
                              f"{self.reinit_layers}): frozen, they would stay random")

    def _validate_search(self):
        from learnd.engine.population import METRICS, STRATEGIES
        from learnd.engine.search_space import SearchSpace

        if isinstance(self.search_space, str):      # from the environment: JSON or a TOML inline table
            text = self.search_space.strip()
            try:
                self.search_space = json.loads(text) if text else {}
            except json.JSONDecodeError:
                try:
                    self.search_space = tomllib.loads(f"v = {text}")["v"]
                except tomllib.TOMLDecodeError as exc:
                    raise ConfigError(f"search_space is neither JSON nor a TOML inline table: {exc}") from None
        if not isinstance(self.search_space, dict):
            raise ConfigError(f"search_space must be a table of setting = distribution, got {self.search_space!r}")
        try:
            SearchSpace.parse(self.search_space or None)
        except EngineError as exc:
            raise ConfigError(str(exc)) from None
        for name, value, allowed in (("search_strategy", self.search_strategy, STRATEGIES),
                                     ("search_metric", self.search_metric, METRICS),
                                     ("serve", self.serve, SERVE_MODES)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.ensemble_k < 1 or self.search_interval < 1 or self.search_min_rows < 2:
            raise ConfigError("ensemble_k and search_interval must be >= 1, search_min_rows >= 2")
        if self.serve == "ensemble" and self.search_members < 2:
            raise ConfigError("serve = 'ensemble' averages a population's members: it needs search_members >= 2")

    @property
    def searching(self):
        """True when the trainer holds a population rather than one model."""
        return self.search_members >= 2

    @property
    def metrics_host(self):
        return self.metrics.rpartition(":")[0]

    @property
    def metrics_port(self):
        return int(self.metrics.rpartition(":")[2])


DAEMON_KEYS = {f.name for f in dataclasses.fields(Config)} - {"model"}
MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec) if f.init}


def _parse_env_value(text):
    """An environment value read as a TOML value (numbers, bools, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_keys(source, daemon, model):
    unknown = set(daemon) - DAEMON_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown settings {sorted(unknown)}")
    unknown = set(model) - MODEL_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown [model] settings {sorted(unknown)}")


def load(path=None, env=None, flags=None):
    """Resolve a Config from a TOML file (optional), the environment and flags.

    flags: {daemon_key: value} and {"model": {model_key: value}}; None values are ignored.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get("LEARND_CONFIG") or None
    daemon, model = {}, {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        file_model = data.pop("model", {})
        if not isinstance(file_model, dict):
            raise ConfigError(f"{path}: [model] must be a table")
        _check_keys(str(path), data, file_model)
        daemon.update(data)
        model.update(file_model)
    for key, text in env.items():
        if not key.startswith("LEARND_") or key == "LEARND_CONFIG":
            continue
        name = key[len("LEARND_"):].lower()
        if name.startswith("model_"):
            mname = name[len("model_"):]
            if mname not in MODEL_KEYS:
                raise ConfigError(f"environment {key}: unknown model setting {mname!r}")
            model[mname] = _parse_env_value(text)
        elif name in DAEMON_KEYS:
            value = _parse_env_value(text)
            if name in ("ingest", "predict", "control", "snapshots", "metrics", "state_dir", "log_level",
                        "curve_server_secret", "curve_clients_dir", "curve_control_clients_dir",
                        "follower_server_key", "follower_client_key",
                        "early_stopping_metric", "early_stopping_action", "progressive_validation",
                        "search_strategy", "search_metric", "serve", "search_space", "init_from"):
                value = text   # addresses and paths are strings even when they look numeric
            daemon[name] = value
        else:
            raise ConfigError(f"environment {key}: unknown setting {name!r}")
    flags = dict(flags or {})
    flag_model = flags.pop("model", None) or {}
    _check_keys("flags", {k: v for k, v in flags.items() if v is not None}, flag_model)
    daemon.update({k: v for k, v in flags.items() if v is not None})
    model.update(flag_model)
    if isinstance(model.get("hidden"), list):
        model["hidden"] = tuple(model["hidden"])
    return Config(**daemon, model=model).validate()
