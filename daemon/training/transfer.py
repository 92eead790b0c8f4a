"""Transfer learning in the daemon: the trained model that `init_from` names, read from
a daemon checkpoint (checkpoint-<n>.ckpt) or a model file (Model.save)."""
from __future__ import annotations

from learnd.engine import EngineError, Model
from learnd.engine.state import state_from_bytes

from learnd.daemon.errors import ConfigError
from learnd.daemon.training import checkpoints

# The source's settings a transferred model keeps (engine.model's trunk settings).
TRUNK_SETTINGS = ("hidden", "activation", "input_dim", "batch_norm", "bn_eps", "dtype",
                  "normalize_inputs")


def load_source(path):
    """The Model saved at `path`; ConfigError if it cannot be read as one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"init_from: cannot read {path}: {exc}") from None
    try:
        if data.startswith(checkpoints.MAGIC):
            payload = checkpoints.decode(data)
            # A population's checkpoint holds its champion under "model" too.
            if payload.get("model") is None:
                raise ConfigError(f"init_from: the checkpoint {path} holds no model yet")
            data = payload["model"]
        return Model.from_state(state_from_bytes(data))
    except (checkpoints.CorruptCheckpoint, EngineError) as exc:
        raise ConfigError(f"init_from: {path} is neither a learnd checkpoint nor a model file: {exc}") from None


def trunk_settings(source):
    """The source's trunk settings as [model] values (lists for tuples)."""
    spec = source.spec.to_dict()
    return {k: spec[k] for k in TRUNK_SETTINGS}


def transferred(source, model_kwargs, reinit_layers):
    """Model.from_pretrained(source) for the daemon's stream: model_kwargs are the
    [model] settings with the schema's task, n_outputs and input_dim."""
    kwargs = {k: v for k, v in model_kwargs.items() if k not in TRUNK_SETTINGS}
    task, n_outputs = kwargs.pop("task"), kwargs.pop("n_outputs")
    return Model.from_pretrained(source, task=task, n_outputs=n_outputs, reinit_layers=reinit_layers, **kwargs)
