"""learnd's clients: the wire codec, Producer / Predictor / Control, the command line.

Imports only numpy, pyzmq and msgpack, so an app that only sends batches or asks for
predictions needs no Numba.
"""
