"""learnd's numerical core: a Numba-compiled network trained online, embeddable."""
from .errors import EngineError
from .gradcheck import GradCheckReport
from .model import Model
from .network import Snapshot
from .population import Population
from .replay import Replay

__all__ = ["EngineError", "GradCheckReport", "Model", "Population", "Replay", "Snapshot"]
