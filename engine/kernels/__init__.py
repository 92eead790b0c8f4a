"""Numba kernels: the only place `@njit` appears in the engine.

One module per math family. Kernels take contiguous arrays and scalars, write into
buffers they are given, allocate nothing in their loops and raise nothing.
"""
