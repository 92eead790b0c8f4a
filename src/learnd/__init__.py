"""learnd: a daemon that trains neural networks online from ZeroMQ streams and serves
them while they learn, and the same numerical core embedded.

    from learnd import Model            # the embedded entry point
    from learnd import Population       # many models on one stream, the best one served
    python -m learnd serve              # the command line (also the `learnd` script)

The three parts are subpackages: ``learnd.engine`` (the Numba core), ``learnd.daemon``
(the long-running process) and ``learnd.clients`` (the wire codec, the client classes,
the command line). In the source tree they are the top-level folders engine/, daemon/
and clients/; pyproject.toml installs them under this one name, so that learnd puts no
generic top-level package (``engine``, ``daemon``, ``clients``) into an environment.
"""
from learnd.engine import EngineError, GradCheckReport, Model, Population, Replay, Snapshot

__all__ = ["EngineError", "GradCheckReport", "Model", "Population", "Replay", "Snapshot"]
