"""Operations: the single-process daemon, the supervisor of the process tree, control, metrics HTTP, CURVE."""
