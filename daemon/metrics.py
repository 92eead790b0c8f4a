"""Every Prometheus metric learnd exports, declared together on one registry.

Values that already live elsewhere (queue depth, model version, learning rate,
uptime) are read at scrape time by a custom collector; event counts and latencies
are counted where they happen.  docs/metrics.md lists each one.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from learnd.clients import handshake
from learnd.clients.protocol import ERROR_CODES

from learnd.daemon.training.diagnosis import GAPS, VERDICTS

# Latency buckets from 25 µs to 2.5 s: predict replies take tens of microseconds.
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                   50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5)
STEP_BUCKETS = (100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)
# The *_created series double the exposition and say nothing an operator reads.
disable_created_metrics()

SPLITS = ("train", "train_dev", "dev", "test")
SEARCH_DECISIONS = ("champion", "replace", "promote", "copy")
# Figures per evaluated split beside error, loss and rows (which exist for every task).
EVAL_FIGURES = {
    "accuracy": "Accuracy (1 - error), classification.",
    "precision": "Precision: of the positive class (binary), macro-averaged (multiclass, multilabel).",
    "recall": "Recall: of the positive class (binary), macro-averaged (multiclass, multilabel).",
    "f1": "F1: of the positive class (binary), macro-averaged (multiclass, multilabel).",
    "weighted_error": "Error with each row counted by its sample weight (rows that carried weights).",
    "mse": "Mean squared error over rows and outputs, regression.",
    "mae": "Mean absolute error over rows and outputs, regression.",
}
DELAYED_LABEL_OUTCOMES = ("trained", "expired", "unknown")
PREDICT_OUTCOMES = ("ok", "error")
FOLLOWER_OUTCOMES = ("applied", "duplicate", "heartbeat", "refused")
CHECKPOINT_OUTCOMES = ("ok", "error")
SOCKETS = ("ingest", "predict", "control", "snapshots")
# Why a handshake failed, as the daemon can tell: its ZAP handler refused the CURVE key,
# or anything else (no CURVE, a wrong server key, not ZMTP at all, a reset mid-handshake;
# a client without CURVE shows as either a mechanism mismatch or a reset, depending on
# which end gives up first, so those are not told apart).
HANDSHAKE_FAILED = "handshake_failed"
AUTH_FAILURE_REASONS = (handshake.KEY_REFUSED, HANDSHAKE_FAILED)


class ServingMetrics:
    """The metrics of the predict path and of the public sockets, on `registry` (tests
    pass a private CollectorRegistry): what a daemon and a follower both expose."""

    def __init__(self, registry=None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rejected = Counter("learnd_rejected_total", "Messages refused, by error code.",
                                ["reason"], registry=r)
        self.predict_requests = Counter("learnd_predict_requests_total", "Predict requests by outcome.",
                                        ["outcome"], registry=r)
        self.predict_rows = Counter("learnd_predict_rows_total", "Rows predicted.", registry=r)
        self.predict_batches = Counter("learnd_predict_batches_total",
                                       "Predict kernel calls; each answers one or more requests.",
                                       registry=r)
        self.predict_latency = Histogram("learnd_predict_latency_seconds",
                                         "Time from receiving a predict request to sending its reply.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter("learnd_auth_failures_total",
                                     "Connections refused at the handshake, so none of their messages "
                                     "was read: CURVE key not allowed, or any other failed handshake.",
                                     ["socket", "reason"], registry=r)
        self.auth_allowed_keys = Gauge("learnd_auth_allowed_keys",
                                       "CURVE client keys each socket accepts (0 with CURVE off).",
                                       ["socket"], registry=r)
        for sock in SOCKETS:
            self.auth_allowed_keys.labels(sock).set(0)
            for reason in AUTH_FAILURE_REASONS:
                self.auth_failures.labels(sock, reason)
        for code in ERROR_CODES:
            self.rejected.labels(code)
        for outcome in PREDICT_OUTCOMES:
            self.predict_requests.labels(outcome)

    def add_live_collector(self, read):
        """Register gauges read at scrape time: read() -> {name: (help, value)}, where a
        value is a number or (label name, {label value: number})."""
        self.registry.register(_LiveCollector(read))


class Metrics(ServingMetrics):
    """The daemon's metrics: the serving ones, and those of ingest, training, evaluation
    and state."""

    def __init__(self, registry=None):
        super().__init__(registry)
        r = self.registry
        self.samples_trained = Counter("learnd_samples_trained_total", "Rows trained on.", registry=r)
        self.batches_trained = Counter("learnd_batches_trained_total", "Optimizer steps applied.",
                                       registry=r)
        self.empty_steps = Counter("learnd_empty_steps_total",
                                   "Steps of a data-parallel group to which this rank brought no rows "
                                   "(weight 0).", registry=r)
        self.replay_steps = Counter("learnd_replay_steps_total",
                                    "Replay steps: optimizer steps on recent training rows, taken while "
                                    "no new training data waits.", registry=r)
        self.replay_step_seconds = Histogram("learnd_replay_step_seconds", "Time of one replay step.",
                                             buckets=STEP_BUCKETS, registry=r)
        self.ingest_messages = Counter("learnd_ingest_messages_total",
                                       "Train messages by outcome (accepted, duplicate, rejected).",
                                       ["outcome"], registry=r)
        self.ingest_rows = Counter("learnd_ingest_rows_total", "Rows accepted on the ingest socket.",
                                   ["split"], registry=r)
        self.ingest_paused = Counter("learnd_ingest_paused_total",
                                     "Times ingest stopped reading because the training queue was full.",
                                     registry=r)
        self.step_seconds = Histogram("learnd_step_seconds", "Time of one training step.",
                                      buckets=STEP_BUCKETS, registry=r)
        self.train_loss = Gauge("learnd_train_loss",
                                "EWMA (beta 0.98, bias-corrected) of the training loss per step.",
                                registry=r)
        self.train_loss.set(float("nan"))     # no step yet: no loss, rather than a false 0
        self.nonfinite_steps = Counter("learnd_nonfinite_steps_total",
                                       "Steps skipped because their loss or gradient was not finite.",
                                       registry=r)
        self.eval_error = Gauge("learnd_eval_error", "Error on the last evaluation, per split.",
                                ["split"], registry=r)
        self.eval_loss = Gauge("learnd_eval_loss", "Loss on the last evaluation, per split.",
                               ["split"], registry=r)
        self.eval_adversarial_error = Gauge(
            "learnd_eval_adversarial_error",
            "Error on FGSM examples of the split's rows at adversarial_eval_epsilon, last evaluation.",
            ["split"], registry=r)
        self.eval_rows = Gauge("learnd_eval_rows", "Rows in the last evaluation, per split.",
                               ["split"], registry=r)
        self.eval_figures = {
            name: Gauge(f"learnd_eval_{name}", doc + " Per split, last evaluation.", ["split"], registry=r)
            for name, doc in EVAL_FIGURES.items()}
        # Error analysis: tag labels are bounded by max_tags (+1 for "(other)"), splits by SPLITS.
        self.eval_error_by_tag = Gauge("learnd_eval_error_by_tag",
                                       "Error on the rows of a held-out split that carry a tag, last evaluation.",
                                       ["split", "tag"], registry=r)
        self.eval_tag_rows = Gauge("learnd_eval_tag_rows",
                                   "Rows of a held-out split that carry a tag, last evaluation.",
                                   ["split", "tag"], registry=r)
        self.eval_suspects = Gauge("learnd_eval_suspect_rows",
                                   "Held-out rows whose given label the model finds least likely "
                                   "(confident learning), last evaluation.", ["split"], registry=r)
        self.drift_detected = Counter("learnd_drift_detected_total",
                                      "Changes the drift detector found in the progressive error stream.",
                                      registry=r)
        self.diagnosis_gap = Gauge("learnd_diagnosis_gap",
                                   "Bias/variance gaps between the splits' errors (docs/metrics.md).",
                                   ["gap"], registry=r)
        self.diagnosis_gap_error = Gauge("learnd_diagnosis_gap_standard_error",
                                         "Standard error of each diagnosis gap (NaN where unknown).",
                                         ["gap"], registry=r)
        self.diagnosis_verdict = Gauge("learnd_diagnosis_verdict",
                                       "1 for the current diagnosis verdict, 0 for the others.",
                                       ["verdict"], registry=r)
        self.bayes_error_proxy = Gauge("learnd_bayes_error_proxy",
                                       "Configured human-level error, the proxy for Bayes error.",
                                       registry=r)
        self.progressive_error = Gauge("learnd_progressive_error",
                                       "Test-then-train error over about the last progressive_window rows.",
                                       registry=r)
        self.progressive_loss = Gauge("learnd_progressive_loss",
                                      "Test-then-train loss over about the last progressive_window rows.",
                                      registry=r)
        # The population (search_members >= 2).  The member label is the member's slot,
        # 0 .. search_members - 1, so the series stay bounded however many members come
        # and go; learnd_member_id says which member holds a slot now.
        self.search_decisions = Counter("learnd_search_decisions_total",
                                        "Population decisions, by kind (champion, replace, promote, copy).",
                                        ["kind"], registry=r)
        for kind in SEARCH_DECISIONS:
            self.search_decisions.labels(kind)
        self.search_champion = Gauge("learnd_search_champion_slot", "Slot of the population's champion.",
                                     registry=r)
        self.member_metric = Gauge("learnd_member_progressive_figure",
                                   "Each member's search_metric figure on the rows the members are ranked on "
                                   "(progressive error or loss; NaN while it warms up).", ["member"], registry=r)
        self.member_dev_error = Gauge("learnd_member_dev_figure",
                                      "Each member's figure on the dev reservoir at the last decision.",
                                      ["member"], registry=r)
        self.member_rows = Gauge("learnd_member_rows_trained", "Training rows each member has learned from.",
                                 ["member"], registry=r)
        self.member_id = Gauge("learnd_member_id", "Id of the member that holds each slot now.",
                               ["member"], registry=r)
        self.best_dev_error = Gauge("learnd_best_dev_error",
                                    "Best dev figure so far (the early-stopping metric).", registry=r)
        # learnd_best_model_version is read at scrape time (Server._live_values).
        self.frozen_rows = Counter("learnd_frozen_rows_total",
                                   "Training rows not trained on because training was frozen.",
                                   registry=r)
        self.rollbacks = Counter("learnd_rollbacks_total", "Rollbacks to the best model.", registry=r)
        self.grad_norm = Gauge("learnd_grad_norm", "L2 norm of the last gradient, per parameter array.",
                               ["param"], registry=r)
        self.weight_norm = Gauge("learnd_weight_norm", "L2 norm of each parameter array.",
                                 ["param"], registry=r)
        self.checkpoints = Counter("learnd_checkpoints_total", "Checkpoints written, by outcome.",
                                   ["outcome"], registry=r)
        self.checkpoint_seconds = Histogram("learnd_checkpoint_seconds", "Time to write a checkpoint.",
                                            buckets=STEP_BUCKETS, registry=r)
        self.checkpoint_load_failures = Counter(
            "learnd_checkpoint_load_failures_total",
            "Checkpoints found unreadable at start (an older one was used).", registry=r)
        self.wal_fsync_seconds = Histogram("learnd_wal_fsync_seconds",
                                           "Time of one grouped write-ahead-log fsync.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.wal_replayed = Counter("learnd_wal_replayed_messages_total",
                                    "Write-ahead-log messages trained again at start.", registry=r)
        self.delayed_labels = Counter("learnd_delayed_labels_total",
                                      "Rows of delayed labels: trained from stored inputs, or refused "
                                      "because their id had expired or was never stored.",
                                      ["outcome"], registry=r)
        for outcome in ("accepted", "duplicate", "rejected"):
            self.ingest_messages.labels(outcome)
        for split in SPLITS:
            self.ingest_rows.labels(split)
        for outcome in CHECKPOINT_OUTCOMES:
            self.checkpoints.labels(outcome)
        for outcome in DELAYED_LABEL_OUTCOMES:
            self.delayed_labels.labels(outcome)
        for verdict in VERDICTS:
            self.diagnosis_verdict.labels(verdict).set(1.0 if verdict == "unknown" else 0.0)
        for gap in GAPS:
            self.diagnosis_gap.labels(gap).set(float("nan"))
            self.diagnosis_gap_error.labels(gap).set(float("nan"))
        self.progressive_error.set(float("nan"))
        self.progressive_loss.set(float("nan"))
        self.best_dev_error.set(float("nan"))

    def set_verdict(self, verdict):
        for v in VERDICTS:
            self.diagnosis_verdict.labels(v).set(1.0 if v == verdict else 0.0)


class FollowerMetrics(ServingMetrics):
    """A follower's metrics (`learnd follow`): the serving ones and those of the snapshots
    it receives.  Its lag, version and readiness are read at scrape time."""

    def __init__(self, registry=None):
        super().__init__(registry)
        r = self.registry
        self.follower_messages = Counter(
            "learnd_follower_messages_total",
            "Messages from the trainer's snapshots socket, by outcome: applied (a new version), "
            "duplicate (a version already held), heartbeat, refused.", ["outcome"], registry=r)
        for outcome in FOLLOWER_OUTCOMES:
            self.follower_messages.labels(outcome)
        self.follower_snapshot_bytes = Counter("learnd_follower_snapshot_bytes_total",
                                               "Bytes of snapshots received from the trainer.", registry=r)
        self.follower_delay = Histogram(
            "learnd_follower_publication_delay_seconds",
            "From a version's publication by the trainer to this follower serving it (the trainer's "
            "clock against this host's).", buckets=LATENCY_BUCKETS, registry=r)


class _LiveCollector:
    def __init__(self, read):
        self._read = read

    def collect(self):
        for name, (doc, value) in self._read().items():
            if isinstance(value, tuple):
                label, values = value
                family = GaugeMetricFamily(name, doc, labels=[label])
                for label_value, v in values.items():
                    family.add_metric([label_value], v)
                yield family
            else:
                yield GaugeMetricFamily(name, doc, value=value)

    def describe(self):
        return []
