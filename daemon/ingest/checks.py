"""Turns a train message into a TrainItem, or refuses it with a protocol error."""
from __future__ import annotations

import copy

import numpy as np

from learnd.clients.protocol import TRAIN_SPLITS, ProtocolError
from learnd.engine import EngineError
from learnd.engine.spec import ModelSpec

from learnd.daemon.ingest import schema as checks
from learnd.daemon.ingest.tags import check_tags
from learnd.daemon.training.trainer import TrainItem

MAX_PRODUCER_LEN = 256


def train_fields(header):
    """(producer, seq, split) of a train header, type-checked."""
    producer, seq, split = header.get("producer"), header.get("seq"), header.get("split", "auto")
    if not isinstance(producer, str) or not 0 < len(producer) <= MAX_PRODUCER_LEN:
        raise ProtocolError("bad_header", f"'producer' must be a string of 1..{MAX_PRODUCER_LEN} chars")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("bad_header", "'seq' must be a non-negative int")
    if split not in TRAIN_SPLITS:
        raise ProtocolError("bad_header", f"'split' must be one of {', '.join(TRAIN_SPLITS)}, got {split!r}")
    return producer, seq, split


def row_ids(ids, m=None):
    """ids must be a 1-D integer array, of m rows when m is given."""
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ProtocolError("bad_array", "ids must be a 1-D integer array")
    if m is not None and ids.shape[0] != m:
        raise ProtocolError("shape_mismatch", f"ids has {ids.shape[0]} rows, x has {m}")


class IngestChecker:
    """Checks train messages against the stream's schema (fixing it on the first one)."""

    def __init__(self, schema, dtype, id_store, limits, model_settings, splitter, delayed_labels,
                 max_abs_value=0.0, max_tags=0):
        self.schema = schema
        self.max_tags = max_tags
        self.splitter = splitter                # daemon.splits.SplitAssigner
        self.delayed_labels = delayed_labels    # the learnd_delayed_labels_total counter
        self.max_abs_value = max_abs_value
        self.model_settings = model_settings
        self.dtype = np.dtype(dtype)
        self.id_store = id_store
        self.limits = limits

    def item(self, message, lsn=0):
        """A TrainItem for a decoded train message; raises ProtocolError, changing nothing."""
        header, arrays = message.header, message.arrays
        producer, seq, split = train_fields(header)
        extra = set(arrays) - {"x", "y", "w", "ids", "tags"}
        if extra or "y" not in arrays:
            raise ProtocolError("bad_array", "a train message carries y, and x (or ids), optionally w and tags")
        x, y, w, ids = arrays.get("x"), arrays["y"], arrays.get("w"), arrays.get("ids")
        if x is None:
            if ids is None:
                raise ProtocolError("bad_array", "a train message needs x, or ids of earlier predictions")
            x = self._stored_inputs(ids)
        schema = self.schema if self.schema.known else copy.copy(self.schema)
        if not schema.known:
            schema.infer(x, y, header)
        checks.check_x(x, schema, self.limits.max_rows, self.max_abs_value)
        Y = checks.targets(y, schema, x.shape[0], self.dtype, self.max_abs_value)
        w = None if w is None else checks.weights(w, x.shape[0])
        if ids is not None:
            row_ids(ids, x.shape[0])
        tags, names = self._tags(arrays, header, x.shape[0])
        if "x" not in arrays and tags is None:      # the tags the predict requests kept with the ids
            tags, names = self.id_store.tags(ids)
            if len(names) > self.max_tags:            # the logged message must pass the same checks
                raise ProtocolError("too_large", f"the rows of these ids were tagged with {len(names)} tag "
                                                 f"names together, more than max_tags = {self.max_tags}: "
                                                 "send their labels in smaller messages")
        with np.errstate(over="ignore"):   # an overflow is refused just below
            x = np.array(x, dtype=self.dtype)  # a copy: the message frames are released
        checks.check_converted("x", x)
        if schema is not self.schema:  # the first valid batch fixes the schema
            self._check_model_settings(schema)
            self.schema.__dict__.update(schema.__dict__)
        if "x" not in arrays:
            self.id_store.discard(ids)
            self.delayed_labels.labels("trained").inc(len(ids))
        return TrainItem(lsn=lsn, producer=producer, seq=seq, split=split, x=x, Y=Y, w=w,
                         codes=self.splitter.assign(x, split), tags=tags, tag_names=names,
                         ids=None if ids is None else ids.astype(np.int64))

    def logged_item(self, message, record):
        """The TrainItem of a logged message (record: wal.Record).  A record whose split
        codes ingest logged is trusted: it passed every check before it was logged and its
        checksum matched when it was read, so only its targets are converted again and its
        rows' splits are taken as logged, not hashed again.  An unchecked record, or the
        first one while the schema is still unknown (it fixes the schema), goes through
        every check."""
        if record.codes is None or not self.schema.known:
            return self.item(message, record.lsn)
        producer, seq, split = train_fields(message.header)
        arrays = message.arrays
        x = np.asarray(arrays["x"], dtype=self.dtype)      # no copy in the model's dtype
        Y = checks.targets(arrays["y"], self.schema, x.shape[0], self.dtype)
        w, ids = arrays.get("w"), arrays.get("ids")
        tags, names = self._tags(arrays, message.header, x.shape[0])
        return TrainItem(lsn=record.lsn, producer=producer, seq=seq, split=split, x=x, Y=Y,
                         w=None if w is None else w.astype(np.float64),
                         codes=np.frombuffer(record.codes, dtype=np.int8), tags=tags, tag_names=names,
                         ids=None if ids is None else ids.astype(np.int64))

    def _tags(self, arrays, header, m):
        """(multi-hot (m, T) bool, tag names) of a message's tags, or (None, ())."""
        if "tags" not in arrays:
            return None, ()
        return check_tags(arrays["tags"], header, m, self.max_tags)

    def _check_model_settings(self, schema):
        """The configured model must be buildable for what the first batch implies."""
        try:
            ModelSpec(**{**self.model_settings, **schema.to_dict()})
        except EngineError as exc:
            raise ProtocolError("bad_label", f"the first batch implies {schema.to_dict()}, which the "
                                             f"configured model cannot take: {exc}") from None

    def _stored_inputs(self, ids):
        row_ids(ids)
        if ids.shape[0] == 0:   # they stand for x, which needs a row
            raise ProtocolError("shape_mismatch", "ids needs at least one id (the rows to train)")
        x, unknown, expired = self.id_store.get(ids)
        if unknown or expired:
            self.delayed_labels.labels("unknown").inc(len(unknown))
            self.delayed_labels.labels("expired").inc(len(expired))
            raise ProtocolError("unknown_id", f"{len(expired)} ids have expired (id_ttl_s) and "
                                              f"{len(unknown)} were never stored or are gone, "
                                              f"e.g. {(expired + unknown)[:5]}")
        return x
