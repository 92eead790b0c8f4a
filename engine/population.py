"""A population: many models learning one stream, compared on the same rows, the best
one served ("caviar" rather than "panda").

    pop = Population(members=8, task="multiclass", n_outputs=10, seed=0)
    for X, y in stream:                # X (m, d), y as Model.partial_fit takes it
        pop.partial_fit(X, y)          # every member scores the batch, then learns from it
    pop.predict(X_new)                 # the champion's answer (or the top-k ensemble's)
    pop.leaderboard()                  # members, settings, rows, error +- standard error

Member 0 starts on the base settings (the keyword arguments given, else the Model
defaults); the others draw theirs from `search_space` (engine.search_space).  Every
member learns from every batch; each scores the batch before it learns from it
(progressive validation), and the per-row errors go into one ring per member, so any
two members are compared on exactly the rows both have scored: a paired comparison.

Every `interval` batches the population decides (`decide`):

- the champion, which predict serves, changes only when a challenger's mean error on
  the rows both scored is lower by more than the noise: standard errors of the paired
  differences, against a bar that holds however many challengers there are and however
  often the question is asked (`champion_sigmas`); a lucky stretch does not move it;
- then the strategy replaces losers (never the champion; a member is judged once it
  has scored `min_rows` rows, replaced no sooner than GRACE x min_rows rows after it
  joined, and only when it is worse than the best by more than the noise):
  ``random``  the worst quarter get fresh draws from the space narrowed around the best
              quarter (coarse to fine);
  ``halving`` successive halving, asynchronous: a member at rung r that has scored
              min_rows * eta**r rows is compared with the others that have; the top
              1/eta move on to rung r + 1, the others are replaced by fresh draws;
  ``pbt``     population-based training: each of the worst quarter becomes a copy of
              one of the best quarter (weights, optimizer state, normalizer, replay
              rows) with its continuous live settings perturbed (x0.8 or x1.25 on the
              scale the space draws them on).

Every decision is kept in `decisions`.  The members' steps run on a thread pool: the
kernels release the GIL, so the members train in parallel on every core.  The members do
not wait for each other at every batch: `partial_fit` returns once the champion has
learned the batch and every member has learned the one before, while the others go on
in the background (each member learns its batches in order, so the results are the same
as one batch at a time).  Everything that reads the members (decide, leaderboard,
predict, snapshot, rehearse, get_state, ...) first waits for them all (`sync`).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist

import numpy as np

from .drift import row_errors
from .ensemble import Ensemble
from .errors import EngineError
from .labels import labels_from_outputs
from .model import LIVE_SETTINGS, Model
from .replay import Replay
from .search_space import REPLAY, SearchSpace

STRATEGIES = ("random", "halving", "pbt")
METRICS = ("progressive_error", "progressive_loss", "dev_error", "dev_loss")
SERVE = ("champion", "ensemble")
NOISE_SIGMAS = 2.0     # a difference counts only this many standard errors beyond zero
PERTURB = (0.8, 1.25)  # PBT's explore step, on the scale the setting is drawn on
# A fresh draw starts untrained and is compared, on the same rows, with members that have
# learned for longer: judged as soon as it may be, it would lose to them nearly always,
# and `random` would churn newcomers for ever.  So it is only replaced once it has
# learned GRACE x min_rows rows (it may become champion before).
GRACE = 4
MAX_DECISIONS = 10_000  # the decision log keeps this many, newest last
FORMAT, VERSION = "learnd.population", 1
_TINY = 1e-12


def row_scores(task, P, Y, error_out, loss_out):
    """Per-row error and loss of outputs P (m, K) against targets Y (m, K).

    Error: 1/0 for a misclassified row (multiclass), the share of wrong labelled
    outputs (binary, multilabel), the squared error summed over outputs (regression).
    Loss: cross-entropy / BCE summed over labelled outputs / half the squared error.
    """
    if task == "multiclass":
        m = P.shape[0]
        true = Y.argmax(axis=1)
        error_out[:] = P.argmax(axis=1) != true
        loss_out[:] = -np.log(np.maximum(P[np.arange(m), true], _TINY))
    elif task in ("binary", "multilabel"):
        labelled = ~np.isnan(Y)
        yz = np.where(labelled, Y, 0.0) >= 0.5
        n = np.maximum(labelled.sum(axis=1), 1)
        error_out[:] = (((P >= 0.5) != yz) & labelled).sum(axis=1) / n
        Pc = np.clip(P.astype(np.float64), _TINY, 1.0 - _TINY)   # 1 - 1e-12 is 1.0 in float32
        loss_out[:] = np.where(labelled, -np.where(yz, np.log(Pc), np.log1p(-Pc)), 0.0).sum(axis=1)
    else:
        d = P - Y
        sq = (d * d).sum(axis=1)
        error_out[:] = sq
        loss_out[:] = 0.5 * sq


def paired_difference(a, b):
    """(mean of a - b, its standard error, rows) over paired per-row figures a, b."""
    d = a - b
    n = d.size
    if n < 2:
        return float(d.mean()) if n else 0.0, math.inf, n
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)), n


class Member:
    """One model of the population and where it stands in the search."""

    def __init__(self, member_id, slot, draw, settings, model, replay, born_row, origin, parent=None):
        self.id = member_id
        self.slot = slot              # its row in the population's score rings
        self.draw = draw              # the searched settings, in the space's names
        self.settings = settings      # every Model keyword argument it was made with
        self.model = model
        self.replay = replay
        self.born_row = born_row      # the stream row from which it has scored every row
        self.origin = origin          # "base", "draw" or "copy"
        self.parent = parent          # the member a copy was taken from
        self.rung = 0                 # successive halving's rung
        self.last_loss = math.nan
        self.skipped = 0              # its steps on new batches skipped as not finite

    def meta(self):
        return {"id": self.id, "slot": self.slot, "draw": _plain(self.draw), "settings": _plain(self.settings),
                "born_row": self.born_row, "origin": self.origin, "parent": self.parent, "rung": self.rung}


class Population:
    """Many models on one stream; see the module docstring.

    members: how many (>= 2).  search_space: a mapping as engine.search_space takes it
    (None: its default).  strategy: random, halving or pbt.  metric: progressive_error
    or progressive_loss (lower is better) on the training rows, or dev_error /
    dev_loss on the rows given to `decide(dev=...)` (the progressive figure while
    there are none).  interval: batches between decisions (0: only when `decide` is
    called, as the daemon does after its evaluations).
    seed: of every draw and of every member's initial weights and dropout (the same
    seed, the same population).  serve: champion or
    ensemble, with ensemble_k members averaged.  eta: halving's keep-1/eta.  window:
    rows each member's score ring holds (the comparisons' horizon).  min_rows: rows a
    member must have scored before it is judged.  threads: of the training pool
    (None: the machine's cores).  min_dev_rows: dev rows a dev metric needs before it
    decides.  replay_ratio / replay_rows: each member's rehearsal
    (engine.Replay): replay_ratio steps after each new batch, on a ring of replay_rows
    (None: 4096 when replay_ratio > 0, else no ring; replay_recency as engine.Replay's; the daemon keeps a ring and calls
    `rehearse` when it has CPU to spare).  progressive: "step" scores a batch with the
    outputs of the step's own forward pass (free; training mode), "inference" with a
    separate inference pass.  Other keyword arguments are the base Model settings.
    """

    def __init__(self, members=8, search_space=None, strategy="random", metric="progressive_error",
                 interval=20, seed=0, serve="champion", ensemble_k=3, eta=3, window=4096, min_rows=512,
                 threads=None, replay_ratio=0, replay_rows=None, replay_recency=256.0, progressive="step",
                 min_dev_rows=100, **base):
        if isinstance(members, bool) or not isinstance(members, int) or members < 2:
            raise EngineError(f"a population needs members >= 2, got {members!r}")
        _one_of("strategy", strategy, STRATEGIES)
        _one_of("metric", metric, METRICS)
        _one_of("serve", serve, SERVE)
        _one_of("progressive", progressive, ("step", "inference"))
        if replay_rows is None:
            replay_rows = 4096 if replay_ratio else 0
        for name, value, low in (("interval", interval, 0), ("ensemble_k", ensemble_k, 1), ("eta", eta, 2),
                                 ("window", window, 16), ("min_rows", min_rows, 2),
                                 ("min_dev_rows", min_dev_rows, 2),
                                 ("replay_ratio", replay_ratio, 0), ("replay_rows", replay_rows, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EngineError(f"{name} must be an int >= {low}, got {value!r}")
        if replay_ratio and replay_rows < 2:
            raise EngineError(f"replay_ratio {replay_ratio} needs replay_rows >= 2, got {replay_rows}")
        if min_rows > window:
            raise EngineError(f"min_rows ({min_rows}) cannot exceed window ({window}): a member is judged "
                              "on rows its score ring still holds")
        self.space = SearchSpace.parse(search_space)
        self.base = dict(base)
        Model(**self.base)                          # the base settings must make a model
        self.settings = {"members": members, "search_space": self.space.to_dict(), "strategy": strategy,
                         "metric": metric, "interval": interval, "seed": seed, "serve": serve,
                         "ensemble_k": ensemble_k, "eta": eta, "window": window, "min_rows": min_rows,
                         "replay_ratio": replay_ratio, "replay_rows": replay_rows, "progressive": progressive,
                         "min_dev_rows": min_dev_rows, "replay_recency": replay_recency}
        self.threads = threads or os.cpu_count() or 1
        self.rng = np.random.default_rng(seed)
        self.rows_seen = 0          # training rows every member has scored and learned from
        self.batches = 0
        self.next_id = 0
        self.decisions = []
        self._error = np.full((members, window), np.nan)   # per-row figures, ring by stream row
        self._loss = np.full((members, window), np.nan)
        self._pool = None
        self._steps = {}             # slot -> future of that member's newest step (see _pipeline)
        self._retired_skips = 0      # nonfinite_steps of the members replaced
        self._skips_taken = 0        # nonfinite_steps already handed out by take_skipped_steps
        self._changes = 0            # counts what changes what predict answers with
        self._served = None          # (changes, Ensemble, workspace) for predict_proba
        self._dev_scores = None      # per-row dev figures while a decision uses them
        self.dev_figures = {}        # member id -> its figure on the last dev rows scored
        self._members = [self._new_member(slot, origin="base" if slot == 0 else "draw")
                        for slot in range(members)]
        self.champion = self._members[0]

    # -- members ---------------------------------------------------------------------------
    @property
    def members(self):
        """The members, each done with every batch given to it (this waits for them)."""
        self.sync()
        return self._members

    def nonfinite_steps(self):
        """Steps on new batches the members skipped because their loss or gradient was
        not finite, since this population was made or restored, replaced members
        included; as far as the members have got (read without waiting for them)."""
        return self._retired_skips + sum(mb.skipped for mb in self._members)

    def take_skipped_steps(self):
        """The skipped steps (`nonfinite_steps`) not yet taken by an earlier call: a
        caller that counts them (the daemon's metric) gets each once, even those of
        members still learning an earlier batch when it asks."""
        total = self.nonfinite_steps()
        new, self._skips_taken = total - self._skips_taken, total
        return new

    def _base_draw(self):
        """The base settings in the space's names (what member 0 'drew')."""
        probe = Model(**self.base).spec
        out = {}
        for name in self.space.dims:
            if name == "width":
                out[name] = int(probe.hidden[0]) if probe.hidden else 0
            elif name == "depth":
                out[name] = len(probe.hidden)
            elif name in REPLAY:
                recency = self.settings.get("replay_recency")
                if recency:                 # None (uniform) lies outside any space's scale
                    out[name] = float(recency)
            else:
                value = getattr(probe, name)
                out[name] = tuple(value) if isinstance(value, (list, tuple)) else value
        return out

    def _new_member(self, slot, origin, space=None):
        member_id = self.next_id
        self.next_id += 1
        draw = self._base_draw() if origin == "base" else (space or self.space).sample(self.rng)
        settings = self.space.apply(self.base, draw) if origin != "base" else dict(self.base)
        settings["seed"] = (int(self.settings["seed"]) * 1_000_003 + member_id) % (2 ** 31)
        model = Model(**settings)
        self._reset_scores(slot)
        return Member(member_id, slot, draw, settings, model, self._new_replay(model, member_id, draw),
                      self.rows_seen, origin)

    def _new_replay(self, model, member_id, draw):
        """The member's ring: the population's replay settings, with those its draw
        gives (replay_recency) laid over them."""
        if not self.settings["replay_rows"]:
            return None
        kwargs = {"recency": self.settings.get("replay_recency", 256.0), **self.space.replay_settings(draw)}
        return Replay(model, rows=self.settings["replay_rows"], ratio=self.settings["replay_ratio"],
                      seed=(int(self.settings["seed"]) * 7919 + member_id) % (2 ** 31), **kwargs)

    def set_replay_recency(self, recency):
        """A new replay recency (None: uniform) for every member; refused when the
        space draws each member's own."""
        if "replay_recency" in self.space.dims:
            raise EngineError("replay_recency is searched: each member of the population draws its own "
                              "from search_space")
        self.settings["replay_recency"] = recency
        for mb in self._members:
            if mb.replay is not None:
                mb.replay.recency = recency

    def _reset_scores(self, slot):
        self._error[slot] = np.nan
        self._loss[slot] = np.nan

    # -- training ----------------------------------------------------------------------------
    def partial_fit(self, X, y, sample_weight=None):
        """Every member scores the batch, then takes one step on it (and its replay
        steps); every `interval` batches, a decision.  X (m, n_features), y and
        sample_weight as Model.partial_fit takes them.  Returns the champion's J.

        The batch is checked once, before any member changes: a bad batch raises
        EngineError and changes nothing."""
        X, Y, w = self._check(X, y, sample_weight)
        m = X.shape[0]
        W = self._error.shape[1]
        keep = slice(max(0, m - W), m)         # a batch longer than the ring keeps its last rows
        cols = (self.rows_seen + np.arange(m)[keep]) % W
        self._pipeline(lambda mb: self._train_member(mb, X, Y, w, cols, keep))
        self.rows_seen += m
        self.batches += 1
        self._changes += 1
        if self.settings["interval"] and self.batches % self.settings["interval"] == 0:
            self.decide()
        return self.champion.last_loss

    def _check(self, X, y, sample_weight):
        checker = self._members[0]
        self._wait_for(checker)                          # its buffers are free again
        X, Y, w = checker.model._batch(X, y, sample_weight, training=True)
        if X.shape[0] < 2 and any(mb.model.spec.batch_norm and mb.model.spec.hidden for mb in self._members):
            raise EngineError(f"with batch norm a training batch needs at least 2 rows, got {X.shape[0]} "
                              "(some members use batch norm)")
        # The members read copies: member 0's buffers are reused by the next check, and
        # the caller's X may change once partial_fit returns while members still learn it.
        return np.array(X, order="C", copy=True), Y.copy(), w.copy()

    def _pipeline(self, work):
        """work(member) for every member on the pool, each after that member's previous
        step; returns once the champion's is done and every step of the batch before
        (so at most two batches are in flight).  The pool takes tasks in order, so a
        member's previous step has always started before its next one waits for it.
        With one thread, each member in turn, at once."""
        if self.threads == 1:
            for mb in self._members:
                work(mb)
            return
        first = [self.champion] + ([self._members[0]] if self._members[0] is not self.champion else [])
        order = first + [mb for mb in self._members if mb not in first]
        pool = self._executor()
        previous, self._steps = self._steps, {}
        for mb in order:
            self._steps[mb.slot] = pool.submit(_after, previous.get(mb.slot), work, mb)
        try:
            for future in previous.values():
                future.result()
            self._wait_for(self.champion)    # the champion's J is what partial_fit returns
        except BaseException:
            self.sync()                      # nothing left running behind the error
            raise

    def _wait_for(self, mb):
        """Wait until `mb` has learned every batch given to it."""
        future = self._steps.get(mb.slot)
        if future is not None:
            future.result()

    def sync(self):
        """Wait until every member has learned every batch given to it; re-raises the
        first error a member's step raised."""
        pending, self._steps = self._steps, {}
        error = None
        for future in pending.values():
            try:
                future.result()
            except BaseException as exc:     # every step finishes before the error is raised
                error = error or exc
        if error is not None:
            raise error

    def _train_member(self, mb, X, Y, w, cols, keep):
        model = mb.model
        task = model.spec.task
        err, loss = self._error[mb.slot], self._loss[mb.slot]
        m = X.shape[0]
        e, l = np.empty(m), np.empty(m)
        P = None
        if self.settings["progressive"] == "inference" and model.network is not None:
            P = model.predict_proba(X)
        before = model.nonfinite_steps
        mb.last_loss = model.learn_checked(X, Y, w)
        mb.skipped += model.nonfinite_steps - before
        if P is None:       # "step", or a member's first batch (no inference before it)
            P = model.last_batch_outputs()
        row_scores(task, P, Y, e, l)
        err[cols], loss[cols] = e[keep], l[keep]
        if mb.replay is not None:
            if model.nonfinite_steps == before:
                mb.replay.observe(row_errors(task, P, Y))
                mb.replay.add(X, Y, w if w.size else None)
            for _ in range(mb.replay.ratio):
                mb.replay.step()

    def _run_on_threads(self, work, members=None):
        """work(member) for every member on the thread pool, one task each, so members of
        different sizes balance over the threads; the results in member order, the first
        error re-raised.  (Dealing the members out in one run per thread measured the
        same on 8 equal members, and would leave a thread idle behind a big member.)"""
        members = self._members if members is None else members
        if self.threads == 1:
            return [work(mb) for mb in members]
        pool = self._executor()
        return [f.result() for f in [pool.submit(work, mb) for mb in members]]

    def rehearse(self):
        """One replay step for every member that has a ring (in parallel); returns how
        many members stepped."""
        self.sync()
        ready = [mb for mb in self._members if mb.replay is not None and mb.replay.ready()]
        if not ready:
            return 0
        self._changes += 1
        return sum(r is not None for r in self._run_on_threads(lambda mb: mb.replay.step(), ready))

    def replay_ready(self):
        """Some member's ring can give a replay batch (read without waiting for the
        members: a ring only grows, and `rehearse` waits for them)."""
        return any(mb.replay is not None and mb.replay.ready() for mb in self._members)

    def _executor(self):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="learnd-member")
        return self._pool

    def close(self):
        """Stop the training threads (they also stop when the population is collected)."""
        try:
            self.sync()
        finally:
            self._close_pool()

    def _close_pool(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- comparisons -----------------------------------------------------------------------
    def _progressive(self):
        return self._loss if self.settings["metric"].endswith("_loss") else self._error

    def _basis(self, members):
        """(per-row figures, one row per slot; the columns to compare `members` on):
        the dev rows of the decision under way, or the training rows all of them scored."""
        if self._dev_scores is not None:
            return self._dev_scores, np.arange(self._dev_scores.shape[1])
        return self._progressive(), self._common_cols(members)

    def _rows_scored(self, mb):
        return min(self.rows_seen - mb.born_row, self._error.shape[1])

    def _common_cols(self, members):
        """Ring columns of the rows every one of `members` has scored, oldest first."""
        W = self._error.shape[1]
        start = max([self.rows_seen - W] + [mb.born_row for mb in members])
        return np.arange(start, self.rows_seen) % W

    def judged(self):
        self.sync()
        return [mb for mb in self._members if self._rows_scored(mb) >= self.settings["min_rows"]]

    def ranking(self, members=None):
        """Members ordered best first by mean metric on the rows all of them scored."""
        self.sync()
        members = self.judged() if members is None else members
        if not members:
            return []
        fig, cols = self._basis(members)
        means = {mb.id: float(fig[mb.slot, cols].mean()) for mb in members}
        return sorted(members, key=lambda mb: (means[mb.id], mb.id))

    def compare(self, a, b):
        """(mean of a's metric - b's, its standard error, rows) on the rows both scored."""
        self.sync()
        fig, cols = self._basis([a, b])
        return paired_difference(fig[a.slot, cols], fig[b.slot, cols])

    def _beats(self, a, b, sigmas=NOISE_SIGMAS):
        """a is better than b by more than `sigmas` standard errors, on at least min_rows rows."""
        diff, se, n = self.compare(a, b)
        return self._enough(n) and diff + sigmas * se < 0

    def _enough(self, rows):
        """Enough shared rows to tell two members apart: min_dev_rows of dev rows, or
        min_rows of training rows."""
        return rows >= self.settings["min_dev_rows" if self._dev_scores is not None else "min_rows"]

    def champion_sigmas(self, challengers, rows):
        """How many standard errors a challenger's lead over the champion must reach on
        `rows` shared rows, with `challengers` of them in the running.

        The plain two-sigma rule would be wrong twice over.  The best of several equal
        members leads the champion by chance far more often than one does (of 7 equals,
        one is 2 standard errors ahead about one time in seven), so the error rate is
        split among the challengers (Bonferroni).  And the question is asked again at
        every decision on a growing set of rows: a rule valid for one look crosses, by
        chance, at some look of a long stream (measured: 4 streams in 20 whose labels
        were pure noise changed champion within 3,000 rows).  So the bar is the normal
        mixture confidence sequence (Robbins; Howard et al. 2021), valid at every look:
        with r = rows / min_rows, a lead counts when it exceeds
        sqrt((1 + 1/r) (ln(1 + r) + 2 ln(1/a))) standard errors, a = the one-sided
        tail of NOISE_SIGMAS, doubled for one side and split among the challengers.
        It is about 4.6 at min_rows and 3.7-3.8 from 4 x min_rows on for 7 challengers.
        """
        alpha = 2.0 * (1.0 - NormalDist().cdf(NOISE_SIGMAS)) / max(1, challengers)
        r = max(rows, 1) / self.settings["min_rows"]
        return math.sqrt((1.0 + 1.0 / r) * (math.log1p(r) + 2.0 * math.log(1.0 / alpha)))

    # -- decisions -----------------------------------------------------------------------------
    def decide(self, dev=None):
        """Pick the champion, then let the strategy replace losers; returns the decisions made.

        dev: (X, y) or (X, y, sample_weight) held-out rows; with metric dev_error or
        dev_loss every member scores them and the comparisons are paired on them (with
        fewer than min_dev_rows, or none, on the training rows as ever)."""
        self.sync()
        self._dev_scores = None
        if dev is not None:
            self._score_dev(*dev)
        try:
            return self._decide()
        finally:
            self._dev_scores = None
            self._changes += 1       # the ranking, so the ensemble's members, may have moved

    def _score_dev(self, X, y, sample_weight=None):
        """Every member's per-row figures on the dev rows (NaN for one not built yet);
        kept per member in `dev_figures`, and for this decision when the metric says so."""
        X, Y, _ = self._members[0].model._batch(X, y, None, training=False)
        Y = Y.copy()
        m = X.shape[0]
        err, loss = np.full((len(self._members), m), np.nan), np.full((len(self._members), m), np.nan)

        def score(mb):
            if mb.model.network is not None:
                row_scores(mb.model.spec.task, mb.model.predict_proba(X), Y, err[mb.slot], loss[mb.slot])

        self._run_on_threads(score)
        fig = loss if self.settings["metric"].endswith("_loss") else err
        self.dev_figures = {}
        for mb in self._members:
            v = fig[mb.slot]
            if not np.isnan(v).any():
                self.dev_figures[mb.id] = {"value": float(v.mean()), "rows": m,
                                           "standard_error": float(v.std(ddof=1) / math.sqrt(m)) if m > 1 else None}
        if self.settings["metric"].startswith("dev_") and m >= self.settings["min_dev_rows"]:
            self._dev_scores = fig

    def _decide(self):
        made = []
        ranked = self.ranking()
        if ranked:
            best = ranked[0]
            diff, se, n = self.compare(best, self.champion)
            sigmas = self.champion_sigmas(len(ranked) - (self.champion in ranked), n)
            if best is not self.champion and self._enough(n) and diff + sigmas * se < 0:
                made.append(self._log("champion", best, previous=self.champion.id, difference=diff,
                                      standard_error=se, sigmas=sigmas, rows=n))
                self.champion = best
            strategy = getattr(self, "_decide_" + self.settings["strategy"])
            made.extend(strategy(ranked))
        return made

    def _losers(self, ranked):
        """(the best quarter of the judged members, those of the worst quarter that have
        had their grace and that the best beats beyond the noise)."""
        if len(ranked) < 4:
            return [], []
        quarter = max(1, len(ranked) // 4)
        best = ranked[0]
        grace = GRACE * self.settings["min_rows"]
        losers = [mb for mb in ranked[-quarter:] if mb is not self.champion
                  and self.rows_seen - mb.born_row >= grace and self._beats(best, mb)]
        return ranked[:quarter], losers

    def _decide_random(self, ranked):
        top, losers = self._losers(ranked)
        space = self.space.narrowed([mb.draw for mb in top])
        return [self._replace(mb, space, reason="random") for mb in losers]

    def _decide_halving(self, ranked):
        eta, made = self.settings["eta"], []
        top = ranked[:max(1, len(ranked) // 4)]
        space = self.space.narrowed([mb.draw for mb in top])
        for rung in sorted({mb.rung for mb in self._members}):
            budget = self.settings["min_rows"] * eta ** rung
            ready = [mb for mb in self._members
                     if mb.rung == rung and self.rows_seen - mb.born_row >= budget]
            if len(ready) < eta:
                continue
            ordered = self.ranking(ready)
            n_keep = max(1, math.ceil(len(ordered) / eta))
            cols = self._common_cols(ordered)
            compared = [{"member": mb.id, "value": self._member_figure(mb, cols)["value"]} for mb in ordered]
            for mb in ordered[:n_keep]:
                mb.rung += 1
                made.append(self._log("promote", mb, rung=mb.rung, compared=compared))
            for mb in ordered[n_keep:]:
                if mb is self.champion:      # the served model is never dropped
                    mb.rung += 1
                    made.append(self._log("promote", mb, rung=mb.rung, why="champion", compared=compared))
                else:
                    made.append(self._replace(mb, space, reason="halving", rung=rung, compared=compared))
        return made

    def _decide_pbt(self, ranked):
        top, losers = self._losers(ranked)
        made = []
        for mb in losers:
            donor = top[int(self.rng.integers(len(top)))]
            made.append(self._copy(donor, mb))
        return made

    def renew(self, reason="drift"):
        """New challengers: the worst quarter of the members (at least one, never the
        champion) is replaced by fresh draws from the whole search space, not the region
        the search narrowed to: after a change in the stream that region may be the wrong
        one.  Returns the decisions made (logged like the strategy's)."""
        self.sync()
        ranked = self.ranking() or list(self._members)
        ranked += [mb for mb in self._members if mb not in ranked]      # the unjudged count as worst
        others = [mb for mb in ranked if mb is not self.champion]
        made = [self._replace(mb, self.space, reason=reason) for mb in others[-max(1, len(ranked) // 4):]]
        self._changes += 1
        return made

    def _replace(self, old, space, reason, **extra):
        figure = self._member_figure(old)          # before its ring is cleared for the new one
        new = self._new_member(old.slot, origin="draw", space=space)
        self._retired_skips += old.skipped
        self._members[old.slot] = new
        return self._log("replace", new, replaced=old.id, reason=reason, replaced_figure=figure,
                         replaced_age=self.rows_seen - old.born_row, space=space.to_dict(), **extra)

    def _copy(self, donor, old):
        """PBT's exploit and explore: old's slot gets donor's state, settings perturbed."""
        figure = self._member_figure(old)          # before its ring is cleared for the copy
        state = donor.model.get_state()
        model = Model.from_state(state)
        draw, changes = dict(donor.draw), {}
        for name, dim in self.space.dims.items():
            if (name not in LIVE_SETTINGS and name not in REPLAY) or dim.kind == "choice" or name not in draw:
                continue
            factor = PERTURB[int(self.rng.integers(2))]
            lo, hi = self.space.origin.dims[name].unit_bounds
            u = min(max(dim.unit_or_low(draw[name], lo), lo), hi)   # a base value may lie outside
            if dim.kind == "uniform":
                u = u + (factor - 1.0) * (hi - lo)          # a step of 20-25% of the range
            else:
                u = u + math.log10(factor)                  # x0.8 / x1.25 on its own scale
            draw[name] = dim.from_unit(min(max(u, lo), hi))
            changes[name] = draw[name]
        model_changes = {k: v for k, v in changes.items() if k not in REPLAY}
        if model_changes:
            model.set(**model_changes)
        member_id = self.next_id
        self.next_id += 1
        settings = {**donor.settings, **model_changes}
        replay = self._new_replay(model, member_id, draw)      # the perturbed recency, if drawn
        if replay is not None and donor.replay is not None:
            replay.set_state(donor.replay.get_state())
        self._reset_scores(old.slot)
        new = Member(member_id, old.slot, draw, settings, model, replay, self.rows_seen, "copy", parent=donor.id)
        new.rung = donor.rung
        self._retired_skips += old.skipped
        self._members[old.slot] = new
        return self._log("copy", new, replaced=old.id, parent=donor.id, changes=_plain(changes),
                         replaced_figure=figure, replaced_age=self.rows_seen - old.born_row)

    def _log(self, kind, member, **details):
        entry = {"kind": kind, "member": member.id, "batch": self.batches, "rows": self.rows_seen,
                 "draw": _plain(member.draw), **details}
        self.decisions.append(entry)
        del self.decisions[:-MAX_DECISIONS]
        return entry

    # -- figures -------------------------------------------------------------------------------
    def _member_figure(self, mb, cols=None):
        """{"value", "standard_error", "rows"}: mb's mean metric over ring columns `cols`
        (None: every row its ring holds), or None before it has scored a row."""
        if cols is None:
            n = self._rows_scored(mb)
            cols = np.arange(self.rows_seen - n, self.rows_seen) % self._error.shape[1]
        n = cols.size
        if n < 1:
            return None
        values = self._progressive()[mb.slot, cols]
        se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        return {"value": float(values.mean()), "standard_error": se, "rows": int(n)}

    def leaderboard(self):
        """One dict per member, best first (judged members by the ranking, then the rest):
        id, slot, draw (its searched settings), rows_trained, age_rows (rows since it
        joined), metric figure ± standard error over its recent rows, state, champion."""
        self.sync()
        ranked = self.ranking()
        order = ranked + [mb for mb in self._members if mb not in ranked]
        common = self._common_cols(ranked) if ranked else None
        board = []
        for place, mb in enumerate(order):
            # Judged members are shown on the rows they are ranked on (all scored them),
            # so the figures compare; the others on the rows they have scored so far.
            fig = self._member_figure(mb, common if mb in ranked else None)
            state = "champion" if mb is self.champion else ("judged" if mb in ranked else "warming up")
            board.append({"member": mb.id, "slot": mb.slot, "rank": place + 1 if mb in ranked else None,
                          "draw": _plain(mb.draw), "rows_trained": int(mb.model.samples_seen),
                          "age_rows": self.rows_seen - mb.born_row, "metric": self.settings["metric"],
                          "value": None if fig is None else fig["value"],
                          "standard_error": None if fig is None else fig["standard_error"],
                          "rows_compared": 0 if fig is None else fig["rows"],
                          "dev": self.dev_figures.get(mb.id),
                          "origin": mb.origin, "parent": mb.parent, "rung": mb.rung, "state": state,
                          "champion": mb is self.champion})
        return board

    # -- serving ---------------------------------------------------------------------------------
    def served(self):
        """The members predict answers from: [champion], or the top ensemble_k."""
        if self.settings["serve"] == "champion":
            self._wait_for(self.champion)
            return [self.champion]
        self.sync()
        ranked = self.ranking()
        top = [self.champion] + [mb for mb in ranked if mb is not self.champion]
        return top[:self.settings["ensemble_k"]]

    def snapshot(self, version=0):
        """What predict serves, immutable: the champion's Snapshot, or an Ensemble of the
        top members' snapshots.  meta names the member (or "ensemble") and who is in it.
        Serving the champion, it does not wait for the other members."""
        served = [mb for mb in self.served() if mb.model.network is not None]
        if not served:
            raise EngineError("the population has not seen data yet; there is nothing to snapshot")
        if self.settings["serve"] == "champion":
            return served[0].model.snapshot(version, meta={"member": served[0].id})
        snaps = [mb.model.snapshot(version) for mb in served]
        return Ensemble(snaps, version, meta={"member": "ensemble", "members": [mb.id for mb in served]})

    def set_serving(self, serve=None, ensemble_k=None):
        """Change what predict answers from (between batches): serve champion or
        ensemble, and ensemble_k.  Raises EngineError on a bad value, changing nothing."""
        serve = self.settings["serve"] if serve is None else serve
        ensemble_k = self.settings["ensemble_k"] if ensemble_k is None else ensemble_k
        _one_of("serve", serve, SERVE)
        if isinstance(ensemble_k, bool) or not isinstance(ensemble_k, int) or ensemble_k < 1:
            raise EngineError(f"ensemble_k must be an int >= 1, got {ensemble_k!r}")
        self.settings["serve"], self.settings["ensemble_k"] = serve, ensemble_k
        self._changes += 1

    def predict_proba(self, X):
        """Head outputs (m, n_outputs) for X (m, n_features): the champion's, or the
        mean of the top ensemble_k members' probabilities (values for regression)."""
        if self.settings["serve"] == "champion":
            self._wait_for(self.champion)
            return self.champion.model.predict_proba(X)
        X = self.champion.model._check_X(X, training=False)
        # The ensemble copies its members' arrays: made once per change of the members,
        # not once per call.
        if self._served is None or self._served[0] != self._changes:
            ens = self.snapshot()
            self._served = (self._changes, ens, ens.new_workspace())
        _, ens, workspace = self._served
        out = np.empty((X.shape[0], ens.n_outputs), dtype=ens.dtype)
        return ens.predict_into(X, out, workspace)

    def predict(self, X):
        """Class ids (m,), 0/1 labels (m, n_outputs), or values, as Model.predict."""
        return labels_from_outputs(self.champion.model.spec.task, self.predict_proba(X))

    # -- state -----------------------------------------------------------------------------------
    def get_state(self):
        """Every member's model and replay state, the score rings, the search state and
        its random generator: a population restored from it makes the same draws."""
        self.sync()
        return {
            "meta": {"format": FORMAT, "version": VERSION, "settings": _plain(self.settings),
                     "base": _plain(self.base), "rows_seen": self.rows_seen, "batches": self.batches,
                     "next_id": self.next_id, "champion": self.champion.id,
                     "decisions": self.decisions, "rng": self.rng.bit_generator.state,
                     "dev_figures": {str(k): v for k, v in self.dev_figures.items()},
                     "members": [mb.meta() for mb in self._members]},
            "models": [mb.model.get_state() for mb in self._members],
            "replays": [None if mb.replay is None else mb.replay.get_state() for mb in self._members],
            "error": self._error.copy(), "loss": self._loss.copy(),
        }

    @classmethod
    def from_state(cls, state, threads=None):
        """The population that gave `state`, ready to go on.  Raises EngineError."""
        try:
            meta = state["meta"]
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise EngineError(f"not a learnd population state of version {VERSION}")
            s = meta["settings"]
            pop = cls.__new__(cls)
            pop.space = SearchSpace.parse(s["search_space"])
            pop.base = dict(meta["base"])
            pop.settings = dict(s)
            pop.threads = threads or os.cpu_count() or 1
            pop.rng = np.random.default_rng()
            pop.rng.bit_generator.state = meta["rng"]
            pop.rows_seen, pop.batches = int(meta["rows_seen"]), int(meta["batches"])
            pop.next_id = int(meta["next_id"])
            pop.decisions = list(meta["decisions"])
            pop._error = np.array(state["error"], dtype=np.float64)
            pop._loss = np.array(state["loss"], dtype=np.float64)
            if pop._error.shape != (s["members"], s["window"]) or pop._loss.shape != pop._error.shape:
                raise EngineError(f"score rings of shape {pop._error.shape} do not fit "
                                  f"{s['members']} members x {s['window']} rows")
            pop._pool = None
            pop._steps = {}
            pop._retired_skips = pop._skips_taken = 0
            pop._changes, pop._served = 0, None
            pop._dev_scores = None
            pop.dev_figures = {int(k): v for k, v in meta.get("dev_figures", {}).items()}
            pop._members = []
            for mm, model_state, replay_state in zip(meta["members"], state["models"], state["replays"]):
                model = Model.from_state(model_state)
                draw = _draw_from_plain(mm["draw"])
                replay = pop._new_replay(model, int(mm["id"]), draw)
                if replay is not None and replay_state is not None:
                    replay.set_state(replay_state)
                mb = Member(int(mm["id"]), int(mm["slot"]), draw, mm["settings"],
                            model, replay, int(mm["born_row"]), mm["origin"], mm["parent"])
                mb.rung = int(mm["rung"])
                pop._members.append(mb)
            if len(pop._members) != s["members"]:
                raise EngineError(f"state holds {len(pop._members)} members, its settings say {s['members']}")
            champions = [mb for mb in pop._members if mb.id == meta["champion"]]
            if not champions:
                raise EngineError(f"state names champion {meta['champion']}, which is not a member")
            pop.champion = champions[0]
            return pop
        except EngineError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineError(f"not a usable learnd population state: {type(exc).__name__}: {exc}") from None

    def save(self, path):
        """Write the state to `path` atomically (see learnd.engine.population_state)."""
        from . import population_state
        from .state import write_atomic
        write_atomic(path, population_state.to_bytes(self.get_state()))

    @classmethod
    def load(cls, path, threads=None):
        from . import population_state
        with open(path, "rb") as f:
            return cls.from_state(population_state.from_bytes(f.read()), threads=threads)

    def __repr__(self):
        return (f"Population({len(self._members)} members, {self.settings['strategy']}, "
                f"champion {self.champion.id}, rows {self.rows_seen})")


def _after(before, work, mb):
    """work(mb) once the member's previous step (a future, or None) is done."""
    if before is not None:
        before.result()
    return work(mb)


def _one_of(name, value, allowed):
    if value not in allowed:
        raise EngineError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _plain(value):
    """JSON-ready: tuples to lists, numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _draw_from_plain(draw):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in draw.items()}

