import pytest

from daemon.config import load
from daemon.errors import ConfigError


def test_precedence_file_then_env_then_flags(tmp_path):
    path = tmp_path / "learnd.toml"
    path.write_text('batch_size = 32\nqueue_size = 9\ningest = "tcp://127.0.0.1:6000"\n'
                    '[model]\nhidden = [16, 8]\nlr = 0.5\n')
    env = {"LEARND_QUEUE_SIZE": "11", "LEARND_MODEL_LR": "0.25", "LEARND_INGEST": "tcp://127.0.0.1:6001",
           "HOME": "/x"}
    cfg = load(path, env=env, flags={"ingest": "tcp://127.0.0.1:6002", "batch_size": None,
                                     "model": {"lr": 0.125}})
    assert cfg.batch_size == 32 and cfg.queue_size == 11 and cfg.ingest == "tcp://127.0.0.1:6002"
    assert cfg.model == {"hidden": (16, 8), "lr": 0.125}


def test_no_file_gives_the_embedded_default():
    cfg = load(None, env={})
    assert cfg.ingest == "tcp://127.0.0.1:5555" and cfg.metrics_port == 9500 and cfg.model == {}


@pytest.mark.parametrize("text, env", [
    ("no_such = 1\n", {}),
    ("[model]\nno_such = 1\n", {}),
    ("batch_size = 'big'\n", {}),
    ("batch_size = 1\n", {}),
    ("[model]\nlr = -1\n", {}),
    ("", {"LEARND_NO_SUCH": "1"}),
    ("", {"LEARND_MODEL_ACTIVATION": "swish"}),
    ("metrics = 'nowhere'\n", {}),
    ("batch_linger_ms = nan\n", {}),             # NaN passes any "< 0" test
    ("", {"LEARND_EVAL_INTERVAL_S": "inf"}),
    ("this is not toml", {}),
])
def test_bad_settings_are_refused_with_a_message(tmp_path, text, env):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path, env=env)
    assert str(err.value)
