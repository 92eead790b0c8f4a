"""Where a data-parallel rank listens, and what a group refuses (training.parallel);
the group itself runs under mpiexec in tests/integration/test_data_parallel.py."""
import os

import pytest

from learnd.daemon.config import load
from learnd.daemon.errors import ConfigError
from learnd.daemon.training.parallel import check_config, for_rank

MODEL = {"input_dim": 4, "task": "binary", "n_outputs": 1}


def test_rank_r_adds_ten_r_to_every_tcp_port_and_keeps_its_own_state_dir():
    config = load(env={}, flags={"ingest": "tcp://0.0.0.0:5555", "predict": "tcp://127.0.0.1:5556",
                                 "control": "tcp://127.0.0.1:0", "snapshots": "ipc:///run/learnd/snap",
                                 "metrics": "0.0.0.0:9500", "state_dir": "/srv/learnd", "model": MODEL})
    zero, two = for_rank(config, 0), for_rank(config, 2)
    assert (zero.ingest, zero.predict, zero.metrics) == ("tcp://0.0.0.0:5555", "tcp://127.0.0.1:5556", "0.0.0.0:9500")
    assert (two.ingest, two.predict, two.metrics) == ("tcp://0.0.0.0:5575", "tcp://127.0.0.1:5576", "0.0.0.0:9520")
    assert two.control == "tcp://127.0.0.1:0"            # the OS's choice stays the OS's
    assert two.snapshots == "ipc:///run/learnd/snap"     # not TCP: the operator's to make distinct
    assert (zero.state_dir, two.state_dir) == (os.path.join("/srv/learnd", "rank-0"),
                                               os.path.join("/srv/learnd", "rank-2"))
    assert config.ingest == "tcp://0.0.0.0:5555" and config.state_dir == "/srv/learnd"
    assert two.model == config.model and two.model is not config.model


@pytest.mark.parametrize("flags, expected", [
    ({"model": {"task": "binary"}}, "input_dim, n_outputs"),
    ({"search_members": 4, "model": MODEL}, "population"),
    ({"early_stopping_action": "freeze", "model": MODEL}, "freeze"),
    ({"checkpoint_keep": 1, "model": MODEL}, "checkpoint_keep"),
])
def test_what_a_group_cannot_do_is_a_config_error(flags, expected):
    with pytest.raises(ConfigError, match=expected):
        check_config(load(env={}, flags=flags))


def test_replay_is_off_in_a_group():
    config = check_config(load(env={}, flags={"replay_ratio": 8, "model": MODEL}))
    assert config.replay_ratio == 0
