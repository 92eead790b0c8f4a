"""Stopping, the same way in every kind of process, what runs beside its main loop: the
threads that watch a `should_exit` event (the predict thread, the handshake watcher)
and the HTTP server of /metrics and the probes."""
from __future__ import annotations

THREAD_JOIN_S = 5.0


def stop_threads(*threads, timeout=THREAD_JOIN_S):
    """Ask each thread (None or not started: skipped) to end by its `should_exit` event,
    then wait up to `timeout` seconds for each: all are told before any is waited for."""
    running = [t for t in threads if t is not None and t.is_alive()]
    for thread in running:
        thread.should_exit.set()
    for thread in running:
        thread.join(timeout)


def stop_http(server):
    """Stop serving and close the listening socket of an http.server (None: nothing)."""
    if server is not None:
        server.shutdown()
        server.server_close()
