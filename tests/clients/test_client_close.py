"""A client's socket and context are closed however its context manager ends."""
import numpy as np
import pytest

from learnd.clients.client import Producer, Unreachable


def test_a_producer_whose_last_flush_fails_still_closes_its_socket_and_context():
    # Nothing listens on the discard port: the flush on leaving the block gives up.
    with pytest.raises(Unreachable):
        with Producer("tcp://127.0.0.1:9", producer_id="p", timeout=0.2, retries=1) as producer:
            producer.send(np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.int64))
    assert producer.sock is None
    assert producer.ctx.closed       # an open socket would have held the context's termination
