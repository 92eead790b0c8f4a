"""The engine's one exception type."""


class EngineError(ValueError):
    """Bad input to the engine: a wrong shape, dtype, label or setting.

    Raised before anything in the model changes, with a message that says what was
    expected and what came.
    """
