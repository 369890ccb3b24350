"""Who may use the oracle: the chief's gRPC server and the workers' channel to it.

keras-tuner's gRPC oracle has no authentication. The chief's server (:func:`start_oracle_server`,
:func:`serve_oracle`) refuses with ``UNAUTHENTICATED`` every call that does not carry the
study's secret (:func:`keras_normreg.tuning.launcher.oracle_security`), before keras-tuner's
servicer sees it (:class:`_SecretCheck`), and speaks TLS when it has a certificate; a worker
talks to it over :func:`oracle_channel`, which adds the secret to every call
(:class:`_SecretMetadata`) and trusts the chief's certificate. A worker refused for its secret
ends with one clear line (:func:`refused_as`).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import sys
import threading
import time

import grpc  # a requirement of keras-tuner

from keras_normreg import _compat
from keras_normreg.tuning import launcher

__all__ = ["oracle_channel", "refused_as", "serve_oracle", "start_oracle_server"]

# keras-tuner 1.4.8's Parent.to_proto prints its first value (a leftover debug print) every
# time a conditional hyperparameter crosses gRPC; a module global shadows the builtin there.
_compat.kt_silence_conditions()


class _SecretCheck(grpc.ServerInterceptor):
    """The chief's gate: a call whose metadata does not carry ``secret`` under
    :data:`launcher.SECRET_METADATA_KEY` (exactly once) is refused with ``UNAUTHENTICATED``
    before keras-tuner's servicer sees it; the first refusals are reported on ``err``."""

    SHOWN = 5  # refusals reported one by one; the later ones are only counted

    def __init__(self, secret: str, err=None):
        self._expected = secret.encode("ascii")
        self._err = err
        self._lock = threading.Lock()
        self.refused = 0
        self._refuse = grpc.unary_unary_rpc_method_handler(self._deny)

    def _deny(self, request, context):
        with self._lock:
            self.refused += 1
            n = self.refused
        if n <= self.SHOWN:
            more = " (further refusals are not shown)" if n == self.SHOWN else ""
            print(f"tune: refused a call from {context.peer()}: missing or wrong oracle "
                  f"secret{more}", file=self._err or sys.stderr, flush=True)
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong oracle secret (the chief's KERAS_NORMREG_ORACLE_SECRET "
                      "or --oracle-secret-file)")

    def intercept_service(self, continuation, handler_call_details):
        given = [value for key, value in (handler_call_details.invocation_metadata or ())
                 if key == launcher.SECRET_METADATA_KEY]
        if len(given) == 1 and isinstance(given[0], str) and \
                hmac.compare_digest(given[0].encode("ascii", "replace"), self._expected):
            return continuation(handler_call_details)
        return self._refuse


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    """A client call's details with other metadata (gRPC's own class is private)."""


class _SecretMetadata(grpc.UnaryUnaryClientInterceptor):
    """A worker's side: every (unary) call carries ``secret`` in its metadata."""

    def __init__(self, secret: str):
        self._entry = (launcher.SECRET_METADATA_KEY, secret)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        d = client_call_details
        details = _CallDetails(d.method, d.timeout, [*(d.metadata or ()), self._entry],
                               d.credentials, getattr(d, "wait_for_ready", None),
                               getattr(d, "compression", None))
        return continuation(details, request)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def oracle_channel(address: str, security: launcher.OracleSecurity | None = None):
    """A gRPC channel to the chief at ``address`` (``HOST:PORT``) as a worker talks to it:
    TLS when ``security`` has a CA (or the chief's certificate), and the secret on every
    call when it has one."""
    security = security or launcher.OracleSecurity()
    if security.client_tls:
        root = _read_bytes(security.tls_ca or security.tls_cert)
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root))
    else:
        channel = grpc.insecure_channel(address)
    if security.secret is not None:
        channel = grpc.intercept_channel(channel, _SecretMetadata(security.secret))
    return channel


def start_oracle_server(oracle, host: str, port: int, *,
                        security: launcher.OracleSecurity | None = None, err=None):
    """Start serving ``oracle`` on ``host:port`` as a chief does; returns ``(server,
    servicer, exit_chief)`` (see :func:`keras_normreg._compat.oracle_servicer`); the caller stops the
    server. With a secret in ``security`` every call without it is refused
    (``UNAUTHENTICATED``); with a certificate and key it serves TLS. Refused before binding
    (ValueError, :func:`launcher.check_chief`): a ``host`` that is not loopback without a
    secret, unless ``security.insecure``. The remaining exposure is reported on ``err``
    (default stderr, :func:`launcher.exposure_warning`)."""
    from concurrent import futures

    security = security or launcher.OracleSecurity()
    launcher.check_chief(host, port, security)
    interceptors = [] if security.secret is None else [_SecretCheck(security.secret, err=err)]
    # idle workers wait oracle.IDLE_WAIT seconds inside a request: room for a few dozen of them
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), interceptors=interceptors)
    servicer, add_to_server, exit_chief = _compat.oracle_servicer(oracle)
    add_to_server(servicer, server)
    try:
        if security.server_tls:
            creds = grpc.ssl_server_credentials(
                [(_read_bytes(security.tls_key), _read_bytes(security.tls_cert))])
            bound = server.add_secure_port(f"{host}:{port}", creds)
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        bound = 0
        cause = e
    else:
        cause = None
    if not bound:
        raise OSError(f"The chief could not listen on {host}:{port} (address in use or not "
                      f"this machine's). Received: oracle='{host}:{port}'") from cause
    launcher.warn_if_exposed(host, port, err=err, secret=security.secret is not None,
                             tls=security.server_tls)
    server.start()
    return server, servicer, exit_chief


def serve_oracle(oracle, host: str, port: int, poll: float = 0.5, err=None, *,
                 security: launcher.OracleSecurity | None = None) -> None:
    """Serve ``oracle`` to workers over gRPC until the search has ended: some worker was told
    to stop, no trial is running, no trial waits for a retry and every worker that asked for
    trials has been told to stop or has been silent for longer than the oracle's
    ``worker_timeout`` (the study oracle's ``expire_silent_workers``, checked every ``poll``
    seconds). ``security`` (default: none) is the secret every call must carry and the TLS
    certificate; a ``host`` that is not loopback needs a secret or ``security.insecure``, and
    gets a warning on ``err`` (default stderr) without TLS (:func:`start_oracle_server`).
    """
    expire = getattr(oracle, "expire_silent_workers", None)
    if expire is not None:
        oracle.serving = True  # before the first request can come
    try:
        server, servicer, exit_chief = start_oracle_server(oracle, host, port,
                                                           security=security, err=err)
        try:
            while True:
                if expire is not None:
                    expire()
                if servicer.stop_triggered and exit_chief(oracle) and \
                        not _compat.oracle_retry_queue(oracle):
                    break
                time.sleep(poll)
        finally:
            server.stop(grace=2)
    finally:
        if expire is not None:
            oracle.serving = False


def _unauthenticated(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a gRPC call refused as UNAUTHENTICATED."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)) and \
                error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def refused_as(address: str | None):
    """A worker's calls refused by the chief for the secret end the worker with
    :class:`launcher.OracleAuthError` (one clear line) instead of a gRPC traceback."""
    try:
        yield
    except Exception as e:
        if not _unauthenticated(e):
            raise
        raise launcher.OracleAuthError(
            f"The chief at {address} refused this worker: missing or wrong oracle secret. "
            f"Give the worker the chief's secret ({launcher.SECRET_ENV}, or "
            f"--oracle-secret-file). Received: oracle={address!r}") from e


