"""Distributed tuning: keras-tuner's chief/worker processes, on one machine or several.

keras-tuner's protocol: one *chief* process holds the oracle and serves it over gRPC; each
*worker* (a tuner with its own id) asks it for trials, trains them and reports back. The roles
are set by environment variables, which :func:`tuner_environment` sets from the CLI flags:

=========================  ==================================================================
``KERASTUNER_TUNER_ID``    ``"chief"`` for the oracle process; a stable id per worker
``KERASTUNER_ORACLE_IP``   the chief's address (``--oracle HOST:PORT``)
``KERASTUNER_ORACLE_PORT`` the chief's port
=========================  ==================================================================

* One machine: ``keras-normreg tune STUDY --workers N`` (:func:`run_local`) picks a free port
  on 127.0.0.1, starts the chief and N workers (``tuner0`` .. ``tuner{N-1}``) as
  subprocesses, restarts a worker that dies (with the same id, so it resumes the trial it was
  running: the chief hands an id its unfinished trial back) and waits for the chief to finish.
  Worker logs go to ``<directory>/<name>/workers/<id>.log``, the chief's to
  ``<directory>/<name>/chief.log`` (and to the terminal). SIGTERM/SIGINT to the launcher is
  forwarded to every process (SIGKILL after a grace period), waited for, and the launcher
  exits with ``128 + signum``; a chief that dies stops the workers with a one-line error
  naming its exit status and log.
* Several machines, sharing the study directory (for the export):
  ``keras-normreg tune STUDY --role chief --oracle HOST:PORT`` on one,
  ``keras-normreg tune STUDY --role worker --oracle HOST:PORT [--worker-id ID]`` on the others.

Who may use the oracle (keras-tuner's own gRPC oracle has no authentication): every call
carries a shared secret, which the chief checks (:func:`oracle_security`: the variable
``KERAS_NORMREG_ORACLE_SECRET``, or ``--oracle-secret-file PATH`` to a file private to its
owner, mode 600, as ssh demands of a key); a call without it is refused (gRPC
``UNAUTHENTICATED``). ``--tls-cert``/``--tls-key`` make the chief speak TLS (workers:
``--tls-ca``, the certificate they trust). A chief on an address that is not loopback refuses
to start without a secret unless given ``--insecure`` (:func:`check_chief`), and warns when
its calls cross the network in clear (:func:`exposure_warning`). :func:`run_local` gives its
chief and workers a fresh random secret through their environment.

One chief per study: the chief (or a one-process run) holds ``<directory>/<name>/.study.lock``
(:func:`study_lock`) while it runs; a second one is refused with the holder's pid.

keras-tuner's distributed mode needs ``grpcio`` and ``tensorboard``
(``pip install 'keras_normreg[distributed]'``); :func:`check_distributed_dependencies` says so
up front instead of letting every trial fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import math
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

from keras_normreg._locks import FileLock
from keras_normreg._utils import check_bool, environ

__all__ = ["DEFAULT_WORKER_TIMEOUT", "DistributedDependencyError", "OracleAuthError",
           "OracleSecurity", "SECRET_ENV", "SECRET_FILE_ENV", "TLS_CA_ENV", "TLS_CERT_ENV",
           "TLS_KEY_ENV", "check_chief", "check_distributed_dependencies", "check_secret",
           "check_study_free", "check_worker_timeout", "exposure_warning", "free_port",
           "is_loopback", "oracle_security", "parse_address", "read_secret_file", "run_local",
           "security_environment", "study_lock", "tuner_environment", "warn_if_exposed",
           "worker_cpus"]

ENV_KEYS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
ROLES = ("chief", "worker")


class DistributedDependencyError(ImportError):
    """grpcio or tensorboard, needed by keras-tuner's distributed mode, is missing."""


def check_distributed_dependencies() -> None:
    """Raise :class:`DistributedDependencyError` naming what to install when grpcio or
    tensorboard is missing (keras-tuner's chief/worker mode imports both)."""
    missing = [pkg for module, pkg in (("grpc", "grpcio"), ("tensorboard", "tensorboard"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise DistributedDependencyError(
            f"Distributed tuning needs {' and '.join(missing)} (keras-tuner's chief/worker "
            f"mode uses gRPC and TensorBoard's hparams protos): pip install "
            f"'keras_normreg[distributed]' (or pip install {' '.join(missing)}). "
            f"Received: missing={missing!r}")


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``."""
    if not isinstance(address, str) or address.count(":") != 1:
        raise ValueError(f"The oracle address must look like HOST:PORT. "
                         f"Received: oracle={address!r}")
    host, port = address.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"The oracle address must look like HOST:PORT with a port in "
                         f"1..65535. Received: oracle={address!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_worker_id() -> str:
    return f"worker-{socket.gethostname()}"


@contextlib.contextmanager
def tuner_environment(role: str | None, address: str | None, worker_id: str | None = None):
    """Set keras-tuner's role variables for the duration of the block (restored after).

    ``role=None`` leaves the environment alone (one process, unless the caller exported the
    variables itself).
    """
    if role is None:
        if address is not None or worker_id is not None:
            raise ValueError("--oracle and --worker-id need --role chief|worker. "
                             f"Received: oracle={address!r}, worker_id={worker_id!r}")
        yield
        return
    if role not in ROLES:
        raise ValueError(f"Argument `role` must be one of {list(ROLES)}. Received: role={role!r}")
    if address is None:
        raise ValueError(f"--role {role} needs --oracle HOST:PORT. Received: oracle=None")
    host, port = parse_address(address)
    if role == "chief":
        tuner_id = "chief"
    else:
        tuner_id = worker_id or default_worker_id()
        if "chief" in tuner_id:
            raise ValueError(f"A worker id must not contain 'chief' (keras-tuner would take it "
                             f"for the chief). Received: worker_id={tuner_id!r}")
    with environ({"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host,
                  "KERASTUNER_ORACLE_PORT": port}):
        yield


def _tune_command(study: str, role: str, address: str, *, directory, max_trials,
                  worker_id=None, python=None) -> list[str]:
    cmd = [python or sys.executable, "-m", "keras_normreg.cli", "tune", study, "--role", role,
           "--oracle", address]
    if worker_id:
        cmd += ["--worker-id", worker_id]
    if directory:
        cmd += ["--directory", directory]
    if max_trials is not None:
        cmd += ["--max-trials", str(max_trials)]
    return cmd


def _stop(procs, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, each still-running process we started."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in alive:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _check_workers(workers) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer. Received: workers={workers!r}")


def _check_shares(name: str, shares, workers: int) -> None:
    if isinstance(shares, bool) or not isinstance(shares, int) or shares < workers:
        raise ValueError(f"`{name}` must be an integer >= workers ({workers}). "
                         f"Received: {name}={shares!r}")


def worker_cpus(workers: int, available=None, shares: int | None = None) -> list[set[int]]:
    """CPU sets of ``workers`` pinned workers: the ``available`` CPUs (default: this process's
    affinity) split into ``shares`` (default ``workers``) contiguous, disjoint, near-equal
    parts, worker ``i`` taking part ``i``; with fewer CPUs than shares, worker ``i`` gets CPU
    number ``i mod n`` (shared). ``shares > workers`` leaves the last parts unused, so that
    every worker gets the same CPUs whatever the number of workers (``run_local``'s
    ``cpu_shares``: one emulated machine per worker)."""
    _check_workers(workers)
    if shares is None:
        shares = workers
    _check_shares("shares", shares, workers)
    if available is None:
        if not hasattr(os, "sched_getaffinity"):
            raise RuntimeError("Pinning workers to CPUs needs os.sched_setaffinity (Linux). "
                               f"Received: platform={sys.platform!r}")
        available = os.sched_getaffinity(0)
    cpus = sorted(available)
    if not cpus:
        raise ValueError(f"No CPU to pin workers to. Received: available={available!r}")
    if len(cpus) < shares:
        return [{cpus[i % len(cpus)]} for i in range(workers)]
    bounds = [round(i * len(cpus) / shares) for i in range(shares + 1)]
    return [set(cpus[bounds[i]:bounds[i + 1]]) for i in range(workers)]


#: prctl(2) option: the signal a child gets when the thread that started it dies (Linux).
PR_SET_PDEATHSIG = 1


def _libc():
    """The C library (Linux), loaded in the launcher itself: a ``preexec_fn`` runs between
    fork and exec, where loading a library could deadlock on a lock another thread held."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _child_setup(mask):
    """The ``preexec_fn`` of the chief and the workers: on Linux they get SIGTERM when the
    launcher dies, even by SIGKILL, which no handler of the launcher can see (prctl
    ``PR_SET_PDEATHSIG``; a launcher already gone before the call is caught by comparing the
    parent pid); then the child is pinned to the CPUs of ``mask`` (None: no pinning). SIGTERM
    is what the launcher itself sends on a clean stop: the chief and workers stop as then.
    None when there is nothing to do (not Linux, no pinning)."""
    libc = _libc()
    parent = os.getpid()
    if libc is None and mask is None:
        return None

    def setup():
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
        if mask is not None:
            os.sched_setaffinity(0, mask)

    return setup


# ---------------------------------------------------------------- one study, one chief
LOCK_FILE = ".study.lock"


def study_lock(project_dir: str) -> FileLock:
    """The lock a chief (or a one-process tuner) holds on its study directory for as long as
    it runs: ``<project_dir>/.study.lock`` (workers do not take it). A second chief, launcher
    or one-process ``tune`` on the same directory gets :class:`~keras_normreg._locks.LockError`
    naming the holder; the lock dies with its holder."""
    return FileLock(os.path.join(project_dir, LOCK_FILE), f"study {project_dir}")


def check_study_free(project_dir: str) -> None:
    """Raise :class:`~keras_normreg._locks.LockError` (naming the holder) if a chief or a
    one-process tuner runs the study in ``project_dir`` now; the launcher checks before it
    deletes (``--overwrite``) or starts anything."""
    if not os.path.isfile(os.path.join(project_dir, LOCK_FILE)):
        return
    with study_lock(project_dir):
        pass


# ------------------------------------------------------------ who can reach the oracle
#: the shared secret of a study's chief and workers (every gRPC call carries it)
SECRET_ENV = "KERAS_NORMREG_ORACLE_SECRET"
#: ... or the path of a file holding it (readable by its owner only, like an SSH key)
SECRET_FILE_ENV = "KERAS_NORMREG_ORACLE_SECRET_FILE"
#: TLS: the chief's certificate and private key (PEM); a worker's CA certificate (PEM)
TLS_CERT_ENV = "KERAS_NORMREG_ORACLE_TLS_CERT"
TLS_KEY_ENV = "KERAS_NORMREG_ORACLE_TLS_KEY"
TLS_CA_ENV = "KERAS_NORMREG_ORACLE_TLS_CA"
SECURITY_ENV_KEYS = (SECRET_ENV, SECRET_FILE_ENV, TLS_CERT_ENV, TLS_KEY_ENV, TLS_CA_ENV)
#: the gRPC metadata key under which every call carries the secret (lower case: gRPC's rule)
SECRET_METADATA_KEY = "x-keras-normreg-oracle-secret"
#: a shorter secret could be guessed; secrets.token_urlsafe(32) gives 43 characters
MIN_SECRET_LENGTH = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine's loopback interface only."""
    if not isinstance(host, str) or not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host.lower() == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class OracleAuthError(PermissionError):
    """The chief refused this worker's call: missing or wrong oracle secret."""


class OracleSecurity:
    """How a study's chief and workers protect the oracle (:func:`oracle_security`).

    ``secret``: the shared secret every gRPC call carries (None: none; the chief then accepts
    anyone who reaches its port). ``tls_cert``/``tls_key``: the chief's certificate and key
    (PEM paths). ``tls_ca``: the certificate a worker trusts (default ``tls_cert``: a
    self-signed one). ``insecure``: the user accepts a chief on a non-loopback address with
    no secret. The secret never appears in ``repr``.
    """

    __slots__ = ("secret", "tls_cert", "tls_key", "tls_ca", "insecure")

    def __init__(self, secret: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None,
                 insecure: bool = False):
        self.secret = None if secret is None else check_secret(secret)
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self.insecure = check_bool("insecure", insecure)

    @property
    def server_tls(self) -> bool:
        """Whether the chief serves TLS (it has a certificate and a key)."""
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def client_tls(self) -> bool:
        """Whether a worker speaks TLS (it has a CA or the chief's certificate)."""
        return (self.tls_ca or self.tls_cert) is not None

    def __repr__(self):
        secret = None if self.secret is None else "<hidden>"
        return (f"OracleSecurity(secret={secret}, tls_cert={self.tls_cert!r}, "
                f"tls_key={self.tls_key!r}, tls_ca={self.tls_ca!r}, insecure={self.insecure})")


def check_secret(secret, name: str = "secret") -> str:
    """``secret`` if it can be the oracle's shared secret: a string of at least
    :data:`MIN_SECRET_LENGTH` printable ASCII characters without spaces (what a gRPC metadata
    value may hold); else ValueError naming ``name``, which never shows the secret."""
    if not isinstance(secret, str):
        raise ValueError(f"The oracle secret must be a string. "
                         f"Received: {name}=<a {type(secret).__name__}>")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"The oracle secret must have at least {MIN_SECRET_LENGTH} characters "
                         f"(make one with: python -c 'import secrets; "
                         f"print(secrets.token_urlsafe(32))'). "
                         f"Received: {name}=<hidden, {len(secret)} characters>")
    if not all(33 <= ord(c) <= 126 for c in secret):
        raise ValueError(f"The oracle secret must be printable ASCII without spaces (letters, "
                         f"digits, punctuation). Received: {name}=<hidden, {len(secret)} "
                         f"characters>")
    return secret


def _check_private(path: str, name: str, what: str) -> os.stat_result:
    """ValueError naming ``name`` unless ``path`` is a regular file that only its owner may
    read or write (no permission bit for group or others: ssh's rule for private keys)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"The {what} {path} cannot be read ({e.strerror}). "
                         f"Received: {name}={path!r}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"The {what} {path} is not a regular file. Received: {name}={path!r}")
    if os.name == "posix" and st.st_mode & 0o077:
        raise ValueError(f"The {what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or "
                         f"others may access it, and it must be private to its owner (like an "
                         f"SSH key). Run: chmod 600 {path}. Received: {name}={path!r}")
    return st


def read_secret_file(path, name: str = "secret_file") -> str:
    """The secret held in ``path`` (surrounding whitespace, e.g. the final newline, removed).
    The file must be private to its owner (mode 600 or stricter), else ValueError, as ssh
    refuses a private key that others can read."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"The oracle secret file must be a path. Received: {name}={path!r}")
    path = os.fspath(path)
    _check_private(path, name, "oracle secret file")
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"The oracle secret file {path} cannot be read as ASCII text ({e}). "
                         f"Received: {name}={path!r}") from e
    if not text:
        raise ValueError(f"The oracle secret file {path} is empty. Received: {name}={path!r}")
    return check_secret(text, f"the secret in {name}={path!r}")


def _check_pem(path, name: str, private: bool = False) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"`{name}` must be the path of a PEM file. Received: {name}={path!r}")
    path = os.fspath(path)
    if private:
        _check_private(path, name, "TLS private key")
    elif not os.path.isfile(path):
        raise ValueError(f"The TLS file {path} does not exist. Received: {name}={path!r}")
    return path


def oracle_security(*, secret: str | None = None, secret_file=None, tls_cert=None,
                    tls_key=None, tls_ca=None, insecure: bool = False,
                    env=None) -> OracleSecurity:
    """The chief's or a worker's :class:`OracleSecurity`, from the arguments, else from the
    environment (``env``, default ``os.environ``):

    ==================================  ====================================================
    ``KERAS_NORMREG_ORACLE_SECRET``      the secret itself (``secret``)
    ``KERAS_NORMREG_ORACLE_SECRET_FILE`` a file holding it, mode 600 (``secret_file``)
    ``KERAS_NORMREG_ORACLE_TLS_CERT``    the chief's certificate, PEM (``tls_cert``)
    ``KERAS_NORMREG_ORACLE_TLS_KEY``     the chief's private key, PEM, mode 600 (``tls_key``)
    ``KERAS_NORMREG_ORACLE_TLS_CA``      what a worker trusts, PEM (``tls_ca``; default:
                                         ``tls_cert``, for a self-signed certificate)
    ==================================  ====================================================

    An argument wins over the environment; ``secret`` and ``secret_file`` together (or both
    variables) are refused. The secret is never passed on a command line (``ps`` shows it).
    """
    env = os.environ if env is None else env
    if secret is not None and secret_file is not None:
        raise ValueError("Give the oracle secret once: `secret` or `secret_file`, not both. "
                         f"Received: secret=<hidden>, secret_file={secret_file!r}")
    if secret is None and secret_file is None:
        from_env, file_env = env.get(SECRET_ENV), env.get(SECRET_FILE_ENV)
        if from_env is not None and file_env is not None:
            raise ValueError(f"Set one of {SECRET_ENV} and {SECRET_FILE_ENV}, not both. "
                             f"Received: {SECRET_FILE_ENV}={file_env!r}")
        if from_env is not None:
            secret = check_secret(from_env, SECRET_ENV)
        elif file_env is not None:
            secret = read_secret_file(file_env, SECRET_FILE_ENV)
    elif secret_file is not None:
        secret = read_secret_file(secret_file)

    def pick(value, name, key):  # (path, the name its errors give)
        if value is None and env.get(key):
            return env[key], key
        return value, name

    cert, cert_name = pick(tls_cert, "tls_cert", TLS_CERT_ENV)
    key, key_name = pick(tls_key, "tls_key", TLS_KEY_ENV)
    ca, ca_name = pick(tls_ca, "tls_ca", TLS_CA_ENV)
    cert = None if cert is None else _check_pem(cert, cert_name)
    key = None if key is None else _check_pem(key, key_name, private=True)
    ca = None if ca is None else _check_pem(ca, ca_name)
    if key is not None and cert is None:
        raise ValueError(f"A TLS key needs its certificate (--tls-cert or {TLS_CERT_ENV}). "
                         f"Received: tls_cert=None, tls_key={key!r}")
    return OracleSecurity(secret, tls_cert=cert, tls_key=key, tls_ca=ca, insecure=insecure)


def check_chief(host: str, port: int, security: OracleSecurity | None) -> None:
    """What a chief on ``host:port`` must have before it serves (ValueError otherwise): a
    secret when ``host`` is not loopback, unless the user opted in with ``insecure``
    (``--insecure``); a key with its TLS certificate."""
    if security is not None and security.tls_cert is not None and security.tls_key is None:
        raise ValueError(f"The chief serves TLS with a certificate and its private key: give "
                         f"--tls-key (or {TLS_KEY_ENV}) too. Received: tls_key=None")
    if is_loopback(host) or (security is not None and
                             (security.secret is not None or security.insecure)):
        return
    raise ValueError(
        f"Refusing to serve the oracle on {host}:{port}, which is not a loopback address, "
        f"without a secret: anyone who reaches this port could read the study and insert or "
        f"overwrite results. Give the chief and every worker the same secret "
        f"({SECRET_ENV}, or --oracle-secret-file PATH to a file of mode 600), with TLS "
        f"(--tls-cert/--tls-key; workers --tls-ca) across an untrusted network, or pass "
        f"--insecure to accept the risk on a private network. Received: oracle='{host}:{port}'")


def exposure_warning(host: str, port: int, *, secret: bool = False,
                     tls: bool = False) -> str | None:
    """The warning for a chief listening on ``host:port`` (None when there is nothing to say:
    a loopback ``host``, or a secret and TLS). With a secret but no TLS, the calls (secret
    included) cross the network in clear; without a secret (``--insecure``), anyone who
    reaches the port can use the oracle."""
    if is_loopback(host) or (secret and tls):
        return None
    tunnel = (f"keep the chief on 127.0.0.1 and give each worker an SSH tunnel (ssh -N -L "
              f"{port}:127.0.0.1:{port} CHIEF_HOST, then --oracle 127.0.0.1:{port} on the "
              f"worker)")
    if secret:
        return (f"tune: warning: the oracle listens on {host}:{port}, which is not a loopback "
                f"address, without TLS: its calls, the secret included, cross the network in "
                f"clear, and whoever can watch the traffic can read the study and reuse the "
                f"secret. Give the chief --tls-cert/--tls-key (and the workers --tls-ca), or "
                f"{tunnel}.")
    return (f"tune: warning: the oracle listens on {host}:{port}, which is not a loopback "
            f"address, with no authentication (--insecure): anyone who can reach this port "
            f"can read the study (every trial's hyperparameters and scores) and insert or "
            f"overwrite results (a fake trial can rank first and be exported). Run it only on a "
            f"private network, give it a secret ({SECRET_ENV} or --oracle-secret-file), or "
            f"{tunnel}.")


def warn_if_exposed(host: str, port: int, err=None, *, secret: bool = False,
                    tls: bool = False) -> bool:
    """Print :func:`exposure_warning` to ``err`` (default stderr) if it applies; returns
    whether it did."""
    text = exposure_warning(host, port, secret=secret, tls=tls)
    if text:
        print(text, file=err or sys.stderr, flush=True)
    return text is not None


def security_environment(security: OracleSecurity) -> dict[str, str]:
    """The environment variables that hand ``security`` to a chief or worker process: the
    secret and the TLS paths (absolute)."""
    env = {} if security.secret is None else {SECRET_ENV: security.secret}
    for key, path in ((TLS_CERT_ENV, security.tls_cert), (TLS_KEY_ENV, security.tls_key),
                      (TLS_CA_ENV, security.tls_ca)):
        if path is not None:
            env[key] = os.path.abspath(path)
    return env


# ------------------------------------------------------------------------- the launcher
def _exit_status(rc: int) -> str:
    """``"was killed by SIGKILL"``, ``"exited with status 2"``."""
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _shell_code(rc: int) -> int:
    """A process's return code as a shell exit code (killed by signal N: 128 + N)."""
    return 128 - rc if rc < 0 else rc


class _Follow:
    """Copies what the chief writes into its log file to ``out`` as it comes."""

    def __init__(self, path, out):
        self.path, self.out, self.pos = path, out, os.path.getsize(path)

    def __call__(self):
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.pos)
                text = f.read()
                self.pos = f.tell()
        except OSError:
            return
        if text:
            self.out.write(text)
            self.out.flush()


def _check_local_options(workers, pin_cpus, cpu_shares, worker_timeout) -> None:
    """The arguments of :func:`run_local` that need no file or process, checked first."""
    _check_workers(workers)
    check_bool("pin_cpus", pin_cpus)
    if cpu_shares is not None:
        if not pin_cpus:
            raise ValueError("`cpu_shares` needs pin_cpus=True. "
                             f"Received: cpu_shares={cpu_shares!r}, pin_cpus={pin_cpus!r}")
        _check_shares("cpu_shares", cpu_shares, workers)
    if worker_timeout is not None:
        check_worker_timeout(worker_timeout)


def _local_security(host: str, **given) -> OracleSecurity:
    """The oracle's protection for a local run: the one given (arguments, else environment)
    with a fresh random secret when none is given; refused as a chief on ``host`` would be."""
    security = oracle_security(**given)
    if security.secret is None:
        security.secret = secrets.token_urlsafe(32)
    check_chief(host, 0, security)  # e.g. a TLS certificate without its key
    return security


def _prepare_project(project_dir: str, overwrite: bool) -> str:
    """Refuse a study another chief runs, start over if asked, make the worker log folder
    (returned)."""
    check_study_free(project_dir)
    if overwrite and os.path.isdir(project_dir):
        shutil.rmtree(project_dir)
    log_dir = os.path.join(project_dir, "workers")
    os.makedirs(log_dir, exist_ok=True)
    return log_dir


def _child_environment(security: OracleSecurity) -> dict[str, str]:
    """The chief's and the workers' environment: ours without keras-tuner's role variables or
    any oracle protection of our own, plus ``security`` (secret and TLS files)."""
    env = dict(os.environ)
    for k in ENV_KEYS + SECURITY_ENV_KEYS:
        env.pop(k, None)
    env.update(security_environment(security))
    return env


@contextlib.contextmanager
def _signals_recorded():
    """SIGTERM and SIGINT are recorded in the list this yields instead of ending the process
    (from the main thread only); the previous handlers are restored at the end."""
    got: list[int] = []

    def on_signal(signum, frame):
        got.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, on_signal)
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _LocalProcesses:
    """The chief and the workers of a local run: how each is started (command, environment,
    log, CPUs), the running processes and their open log files."""

    def __init__(self, study: str, address: str, *, ids, directory, max_trials, python, env,
                 extra, masks, log_dir: str):
        self.study, self.address, self.ids, self.directory = study, address, ids, directory
        self.max_trials, self.python, self.env, self.extra = max_trials, python, env, extra
        self.masks, self.log_dir = masks, log_dir
        self.chief: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, object] = {}

    def _command(self, role: str, worker_id=None) -> list[str]:
        return _tune_command(self.study, role, self.address, directory=self.directory,
                             max_trials=self.max_trials, worker_id=worker_id,
                             python=self.python) + self.extra

    def start_chief(self, log, mask) -> None:
        self.chief = subprocess.Popen(
            self._command("chief"), env=self.env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(mask))

    def start_worker(self, wid: str) -> None:
        """Start (or restart) worker ``wid``, its output appended to ``workers/<wid>.log``."""
        if wid in self.logs:
            self.logs[wid].close()
        self.logs[wid] = open(os.path.join(self.log_dir, f"{wid}.log"), "a", encoding="utf-8")
        self.workers[wid] = subprocess.Popen(
            self._command("worker", wid), env=self.env, stdout=self.logs[wid],
            stderr=subprocess.STDOUT, preexec_fn=_child_setup(self.masks.get(wid)))

    def started(self) -> list[subprocess.Popen]:
        return [p for p in (self.chief, *self.workers.values()) if p is not None]

    def close_logs(self) -> None:
        for f in self.logs.values():
            f.close()


def _supervise(procs: _LocalProcesses, got_signal: list[int], follow, *, max_restarts: int,
               timeout: float | None, out) -> str | None:
    """Start the workers, then watch everyone until the chief ends or a signal comes: copy the
    chief's log to ``out``, restart a worker that exits abnormally (up to ``max_restarts``
    times). Returns why the run failed (a worker failed for good, the ``timeout``), or None."""
    started = time.monotonic()
    finished: set[str] = set()
    restarts = dict.fromkeys(procs.ids, 0)
    for wid in restarts:
        if got_signal:
            break
        procs.start_worker(wid)
    while procs.chief.poll() is None and not got_signal:
        follow()
        if timeout is not None and time.monotonic() - started > timeout:
            return f"timed out after {timeout:.0f} s"
        for wid, p in list(procs.workers.items()):
            rc = p.poll()
            if rc is None or wid in finished:
                continue
            if rc == 0:
                finished.add(wid)
            elif restarts[wid] < max_restarts:
                restarts[wid] += 1
                print(f"tune: worker {wid} exited with {rc}; restarting it "
                      f"({restarts[wid]}/{max_restarts})", file=out, flush=True)
                procs.start_worker(wid)
            else:
                log = procs.logs[wid].name
                return (f"worker {wid} exited with {rc} {max_restarts + 1} times; last "
                        f"lines of {log}:\n{_tail(log)}")
        time.sleep(0.3)
    return None


def _conclude_local(procs: _LocalProcesses, got_signal: list[int], failed: str | None, follow,
                    *, grace: float, chief_log_path: str) -> int:
    """Stop what must stop, say why, and return the launcher's exit code."""
    chief = procs.chief
    if got_signal:
        name = signal.Signals(got_signal[0]).name
        _stop([chief, *procs.workers.values()], grace)
        follow()
        print(f"tune: stopped by {name}: the chief and {len(procs.workers)} worker(s) were sent "
              f"SIGTERM (SIGKILL after {grace:g} s) and have exited; run the same command "
              "again to resume the study.", file=sys.stderr, flush=True)
        return 128 + got_signal[0]
    if failed:
        _stop([chief, *procs.workers.values()], grace)
        follow()
        print(f"tune: error: {failed}", file=sys.stderr, flush=True)
        print("tune: the study can be resumed by running the same command again.",
              file=sys.stderr, flush=True)
        return 1
    rc = chief.returncode
    follow()
    if rc != 0:
        _stop(list(procs.workers.values()), grace)
        print(f"tune: error: the chief {_exit_status(rc)} (its log: "
              f"{chief_log_path}); the workers were stopped. Run the same command again to "
              "resume the study.", file=sys.stderr, flush=True)
        return _shell_code(rc)
    deadline = time.monotonic() + 60
    for p in procs.workers.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    return 0


def run_local(study: str, workers: int, *, project_dir: str, directory: str | None = None,
              overwrite: bool = False, max_trials: int | None = None, max_restarts: int = 3,
              timeout: float | None = None, host: str = "127.0.0.1", out=None,
              python: str | None = None, pin_cpus: bool = False,
              cpu_shares: int | None = None, worker_timeout: float | None = None,
              grace: float = 10.0, secret: str | None = None, secret_file=None,
              tls_cert=None, tls_key=None, tls_ca=None) -> int:
    """Run ``study`` with a chief and ``workers`` workers on this machine; returns the exit
    code for the shell: 0 when the study ended, non-zero when the chief or a worker failed for
    good, ``128 + signum`` when this process got SIGTERM/SIGINT.

    The chief's output goes to ``<project_dir>/chief.log`` and is copied to ``out`` as it
    comes; each worker's to ``<project_dir>/workers/<id>.log``. SIGTERM or SIGINT (Ctrl-C) is
    forwarded to the chief and the workers as SIGTERM, SIGKILL after ``grace`` seconds, and
    waited for: no process is left behind. A chief that dies stops the workers, with a line
    naming its exit status and its log. A study that another chief (or one-process ``tune``)
    runs is refused before anything starts (:class:`~keras_normreg._locks.LockError`).

    The chief and the workers share a secret that every oracle call carries (see
    :func:`oracle_security`): the one given (argument or environment), else a new random one
    (``secrets.token_urlsafe(32)``); it reaches them through their environment
    (``KERAS_NORMREG_ORACLE_SECRET``), never their command line, which ``ps`` shows to every
    user of the machine. TLS files, when given, reach them the same way.

    Args:
        study: path of the study TOML (the subprocesses read it).
        workers: number of worker processes (>= 1).
        project_dir: ``<directory>/<name>`` (for ``--overwrite``, the lock and the logs).
        directory, max_trials: passed on to the chief and the workers.
        overwrite: delete the project directory before starting.
        max_restarts: restarts allowed per worker that exits abnormally.
        timeout: seconds before everything is stopped (None: no limit).
        host: the address the chief listens on (127.0.0.1: this machine only).
        pin_cpus: restrict each worker to its own share of this process's CPUs (Linux
            ``sched_setaffinity``, :func:`worker_cpus`), and the chief to worker 0's share.
            This emulates one machine per worker with the chief on the first (the speedup
            benchmark uses it); on a machine shared by the workers it is usually slower than
            letting them float.
        cpu_shares: with ``pin_cpus``, split the CPUs into this many shares (default: one
            per worker, >= ``workers``): with a fixed ``cpu_shares`` every worker gets the
            same CPUs whether 1 or N workers run, i.e. 1 vs N equal machines.
        worker_timeout: passed on as ``--worker-timeout`` (None: the study's
            ``distributed.worker_timeout``).
        grace: seconds between SIGTERM and SIGKILL when stopping the processes.
        secret, secret_file, tls_cert, tls_key, tls_ca: the oracle's protection
            (:func:`oracle_security`; default: the environment, and a random secret).
    """
    out = out or sys.stdout
    _check_local_options(workers, pin_cpus, cpu_shares, worker_timeout)
    security = _local_security(host, secret=secret, secret_file=secret_file, tls_cert=tls_cert,
                               tls_key=tls_key, tls_ca=tls_ca)
    ids = [f"tuner{i}" for i in range(workers)]
    masks = (dict(zip(ids, worker_cpus(workers, shares=cpu_shares), strict=True)) if pin_cpus
             else {})
    check_distributed_dependencies()
    log_dir = _prepare_project(project_dir, overwrite)
    address = f"{host}:{free_port(host)}"
    procs = _LocalProcesses(
        study, address, ids=ids, directory=directory, max_trials=max_trials, python=python,
        env=_child_environment(security), masks=masks, log_dir=log_dir,
        extra=[] if worker_timeout is None else ["--worker-timeout", str(worker_timeout)])
    chief_log_path = os.path.join(project_dir, "chief.log")
    print(f"tune: chief on {address}, {workers} worker(s); worker logs in {log_dir}/, "
          f"chief log {chief_log_path}", file=out, flush=True)
    chief_log = open(chief_log_path, "a", encoding="utf-8")
    follow = _Follow(chief_log_path, out)
    try:
        with _signals_recorded() as got_signal:
            try:
                procs.start_chief(chief_log, masks.get(ids[0]))
                failed = _supervise(procs, got_signal, follow, max_restarts=max_restarts,
                                    timeout=timeout, out=out)
                return _conclude_local(procs, got_signal, failed, follow, grace=grace,
                                       chief_log_path=chief_log_path)
            finally:
                _stop(procs.started(), grace)
    finally:
        procs.close_logs()
        chief_log.close()


# ------------------------------------------------------------------------ worker timeout
#: seconds a worker may stay silent before the chief hands its trial to another worker
DEFAULT_WORKER_TIMEOUT = 600.0


def check_worker_timeout(value, name: str = "worker_timeout") -> float:
    """``value`` as seconds (> 0, finite), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number of seconds. "
                         f"Received: {name}={value!r}")
    return float(value)


def heartbeat_interval(worker_timeout: float) -> float:
    """How often a worker tells the chief it is alive: a quarter of the timeout, between
    0.2 s and 60 s."""
    return min(60.0, max(0.2, worker_timeout / 4))
