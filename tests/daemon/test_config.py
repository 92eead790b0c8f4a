import pytest

from learnd.daemon.config import load
from learnd.daemon.errors import ConfigError


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


def test_every_endpoint_is_on_loopback_by_default():
    cfg = load(None, env={})
    assert cfg.metrics_host == "127.0.0.1"
    for address in (cfg.ingest, cfg.predict, cfg.control):
        assert address.startswith("tcp://127.0.0.1:")
    assert cfg.curve_server_secret == ""      # CURVE is opt-in: it needs keys


@pytest.mark.parametrize("env, message", [
    ({"LEARND_CURVE_SERVER_SECRET": "/k/server.key_secret"}, "curve_clients_dir is not"),
    ({"LEARND_CURVE_CLIENTS_DIR": "/k/clients"}, "need curve_server_secret"),
    ({"LEARND_CURVE_CONTROL_CLIENTS_DIR": "/k/control"}, "need curve_server_secret"),
])
def test_curve_settings_must_come_together(env, message):
    with pytest.raises(ConfigError, match=message):
        load(None, env=env)


def test_curve_paths_stay_strings():
    cfg = load(None, env={"LEARND_CURVE_SERVER_SECRET": "123", "LEARND_CURVE_CLIENTS_DIR": "true"})
    assert cfg.curve_server_secret == "123" and cfg.curve_clients_dir == "true"
