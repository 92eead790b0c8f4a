"""CURVE on the daemon's sockets: its key pair, the ZAP handler and the client allowlists.

With `curve_server_secret` set, every socket (ingest, predict, control) is a CURVE
server and a ZAP handler on the daemon's context lets a client finish its handshake
only if its public key is in the allowlist of that socket's ZAP domain: the keys of
`curve_clients_dir` for ingest and predict, those of `curve_control_clients_dir` (by
default the same) for control.  A refused client never gets a message through; its
failed handshake is counted by HandshakeWatcher.  SIGHUP re-reads the allowlists.
"""
from __future__ import annotations

import logging
import threading
import time

import zmq
from zmq.auth.thread import ThreadAuthenticator

from learnd.clients import handshake
from learnd.clients.keys import KeyFileError, is_private, load_allowlist, load_secret

from learnd.daemon.errors import StartupError
from learnd.daemon.metrics import HANDSHAKE_FAILED

log = logging.getLogger("learnd.curve")

EXIT_KEYS = 6          # CURVE configured, but a key file or directory is missing or invalid


class Allowlist:
    """The public keys of one directory, consulted by the ZAP handler for each handshake."""

    def __init__(self, directory):
        self.directory = directory
        self.keys = self._load()
        self.last_refused = None    # Z85 of the last key refused, for the log

    def _load(self):
        keys = load_allowlist(self.directory)
        if not keys:
            raise KeyFileError(f"client key directory {self.directory} holds no NAME.key public "
                               "certificates: no client could connect")
        return keys

    def callback(self, domain, key):
        """ZAP's question, asked on the authenticator's thread: may `key` (Z85) connect?"""
        if key in self.keys:
            return True
        self.last_refused = key.decode("ascii", "replace")
        return False

    def reload(self):
        """Read the directory again; the new set replaces the old in one assignment."""
        self.keys = self._load()
        return len(self.keys)


class CurveServer:
    """The daemon's key pair and ZAP handler; `secure(sock, name)` makes a CURVE server."""

    def __init__(self, config):
        try:
            self.public_key, self.secret_key = load_secret(config.curve_server_secret)
            if not is_private(config.curve_server_secret):
                log.warning("the server secret key %s can be read by other users; chmod 600 it",
                            config.curve_server_secret)
            clients = Allowlist(config.curve_clients_dir)
            control_dir = config.curve_control_clients_dir or config.curve_clients_dir
            control = clients if control_dir == config.curve_clients_dir else Allowlist(control_dir)
        except KeyFileError as exc:
            raise StartupError(f"CURVE: {exc}", EXIT_KEYS) from None
        # Snapshots carry the whole model: followers need a client key like producers.
        self.allowlists = {"ingest": clients, "predict": clients, "snapshots": clients, "control": control}
        self.authenticator = None

    def start(self, context):
        """Install the ZAP handler on `context`; call before any socket is bound."""
        self.authenticator = ThreadAuthenticator(context, log=logging.getLogger("learnd.curve.zap"))
        self.authenticator.start()
        for name, allowlist in self.allowlists.items():
            self.authenticator.configure_curve_callback(domain=name, credentials_provider=allowlist)
        log.info("CURVE on every socket; %s", self.describe())

    def secure(self, sock, name):
        sock.curve_server = True
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.zap_domain = name.encode()

    def describe(self):
        return ", ".join(f"{name}: {len(a.keys)} client keys from {a.directory}"
                         for name, a in self.allowlists.items())

    def reload(self):
        """Re-read every allowlist; one that no longer reads keeps its previous keys."""
        for allowlist in {id(a): a for a in self.allowlists.values()}.values():
            try:
                allowlist.reload()
            except KeyFileError as exc:
                log.error("CURVE allowlist not reloaded, the previous keys stay: %s", exc)
        log.info("CURVE allowlists reloaded; %s", self.describe())

    def allowed_keys(self):
        return {name: len(a.keys) for name, a in self.allowlists.items()}

    def stop(self):
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


class HandshakeWatcher(threading.Thread):
    """Counts and logs the failed handshakes of the daemon's sockets, read from their monitors.

    The first failure on a socket is logged at once, later ones at most every
    LOG_INTERVAL_S as one line, so that a client retrying with a wrong key cannot
    flood the log.
    """

    POLL_MS = 100
    LOG_INTERVAL_S = 10.0

    def __init__(self, context, sockets, counter, curve=None):
        super().__init__(name="learnd-handshakes", daemon=True)
        self.counter = counter
        self.curve = curve
        self.should_exit = threading.Event()
        self.pairs = {handshake.monitor(sock, context): name for name, sock in sockets.items()}
        self._unlogged = {name: {} for name in sockets}
        self._last_log = {name: float("-inf") for name in sockets}

    def run(self):
        if not self.pairs:      # nothing to watch (a predict worker behind the proxy binds nothing)
            self.should_exit.wait()     # an empty poll returns at once: it would spin
            return
        poller = zmq.Poller()
        for pair in self.pairs:
            poller.register(pair, zmq.POLLIN)
        try:
            while not self.should_exit.is_set():
                for pair, _ in poller.poll(self.POLL_MS):
                    failure = handshake.read_event(pair)
                    if failure is not None and failure != handshake.SUCCEEDED:
                        self._count(self.pairs[pair], failure if failure == handshake.KEY_REFUSED
                                    else HANDSHAKE_FAILED)
                self._log_due()
        finally:
            for pair in self.pairs:
                pair.close(linger=0)

    def _count(self, name, reason):
        self.counter.labels(name, reason).inc()
        unlogged = self._unlogged[name]
        unlogged[reason] = unlogged.get(reason, 0) + 1

    def _log_due(self, now=None):
        now = time.monotonic() if now is None else now
        for name, unlogged in self._unlogged.items():
            if not unlogged or now - self._last_log[name] < self.LOG_INTERVAL_S:
                continue
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(unlogged.items()))
            refused = self.curve.allowlists[name].last_refused if self.curve is not None else None
            log.warning("the %s socket refused %d handshake(s) (%s)%s", name, sum(unlogged.values()),
                        counts, f"; last refused client key {refused}" if refused and
                        handshake.KEY_REFUSED in unlogged else "")
            unlogged.clear()
            self._last_log[name] = now
