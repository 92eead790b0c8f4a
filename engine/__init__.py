"""learnd's numerical core: a Numba-compiled network trained online, embeddable."""
from .errors import EngineError
from .gradcheck import GradCheckReport
from .model import Model
from .network import Snapshot
from .replay import Replay

__all__ = ["EngineError", "GradCheckReport", "Model", "Replay", "Snapshot"]
