"""When the trainer takes replay steps: only once new training data has stopped coming
for REPLAY_QUIET_S, so a moment's gap in a flood does not take the CPU that ingest needs."""
import time

import numpy as np

from learnd.daemon.config import Config
from learnd.daemon.ingest import splits
from learnd.daemon.ingest.schema import Schema
from learnd.daemon.metrics import Metrics
from learnd.daemon.training import trainer as trainer_module
from learnd.daemon.training.trainer import TrainItem, Trainer

QUIET_S = 0.5     # long enough that the checks right after new data cannot miss it


def _item(seq, rng, rows=64):
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    Y = (x[:, :1] > 0).astype(np.float32)
    return TrainItem(lsn=0, producer="p", seq=seq, split="train", x=x, Y=Y, w=None,
                     codes=np.full(rows, splits.TRAIN, dtype=np.int8))


def test_replay_waits_for_a_quiet_spell_after_new_data(monkeypatch):
    monkeypatch.setattr(trainer_module, "REPLAY_QUIET_S", QUIET_S)
    rng = np.random.default_rng(0)
    trainer = Trainer(Config(batch_size=64, replay_ratio=4), Schema(4, "binary", 1), Metrics(), None)
    trainer.queue.put(_item(1, rng))
    trainer.consume(trainer._dequeue(), now := time.monotonic())
    trainer._train_ready_batches(now)
    assert trainer.batches_trained == 1 and trainer.replay.filled == 64
    # Everything a replay step needs is there but the quiet: the batch came just now.
    assert not trainer.replay_due()
    deadline = time.monotonic() + 10 * QUIET_S
    while not trainer.replay_due() and time.monotonic() < deadline:
        time.sleep(QUIET_S / 10)
    assert trainer.replay_due()
    assert time.monotonic() - now >= QUIET_S
    trainer.replay_step()
    assert trainer.replay_steps == 1
    # New data restarts the wait, even before it is trained.
    trainer.queue.put(_item(2, rng, rows=8))
    trainer.consume(trainer._dequeue(), time.monotonic())
    assert not trainer.replay_due()
