"""Several predict workers behind one predict endpoint: the supervisor's proxy.

With `predict_workers` > 1 the supervisor binds the public predict ROUTER once (with
CURVE, the high-water marks and the message-size bound of every public socket) and a
DEALER on ipc in the run dir; each worker connects a ROUTER to that DEALER.  libzmq's
own proxy moves the messages between the two in a thread that never takes the GIL, so
the supervisor's Python loop and the proxy do not wait for each other.

    client DEALER/REQ -> [supervisor] ROUTER =proxy= DEALER -> ROUTER [predict-N]

A request reaches a worker as [dealer peer id, client id, b"", header, arrays...]: two
routing frames (PredictServer's `routing_frames`), which the worker's reply carries back
unchanged.  The DEALER hands requests to the connected workers in turn (round robin),
skipping one whose pipe is full; a worker that dies takes the requests queued to it
along (the client library resends after its timeout), and while no worker is connected
requests wait in the proxy until one is.
"""
from __future__ import annotations

import logging
import threading

import zmq

from learnd.daemon.supervisor import sockets

log = logging.getLogger("learnd.proxy")

# Requests the proxy queues for one worker: enough to keep it busy, few enough that a
# worker that dies takes few unanswered requests with it.
BACKEND_HWM = 100


class PredictProxy:
    """The public predict socket and the backend the workers connect to, joined by
    zmq.proxy in a thread until the context is terminated."""

    def __init__(self, ctx, address, backend, max_message_bytes, curve=None):
        self.frontend, self.endpoint = sockets.bind(ctx, zmq.ROUTER, address, "predict", max_message_bytes, curve)
        self.backend = ctx.socket(zmq.DEALER)
        self.backend.setsockopt(zmq.LINGER, 0)
        self.backend.setsockopt(zmq.SNDHWM, BACKEND_HWM)
        self.backend.setsockopt(zmq.RCVHWM, sockets.HWM)
        try:
            self.backend.bind(backend)
        except zmq.ZMQError:
            self.frontend.close(linger=0)
            self.backend.close(linger=0)
            raise
        self.thread = threading.Thread(target=self._run, name="learnd-predict-proxy", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        try:
            zmq.proxy(self.frontend, self.backend)
        except zmq.ZMQError as exc:
            # ETERM: the supervisor terminates the context as it stops.  Anything else is
            # never expected, and /healthz fails once this thread has ended.
            if exc.errno != zmq.ETERM:
                log.error("the predict proxy stopped: %s", exc)
        finally:
            # Closed here, by the thread that used them last: the context's term() waits for it.
            self.frontend.close(linger=0)
            self.backend.close(linger=0)

    def close(self):
        """Close the sockets of a proxy that never started (a start-up that failed
        after it was made); a started one closes them itself once the context terminates."""
        if self.thread.ident is None:
            self.frontend.close(linger=0)
            self.backend.close(linger=0)

    @property
    def alive(self):
        return self.thread.is_alive()
