"""Who may use the oracle: a real chief gRPC server on 127.0.0.1 with a secret refuses every
call that does not carry it (UNAUTHENTICATED) and leaves the study untouched; the workers'
channel carries it; TLS with a self-signed certificate; a chief on a non-loopback address
without a secret refuses to start; secret files must be private; the launcher hands its
processes a random secret through their environment. No training: the oracle's RPCs are
called directly through keras-tuner's stub and messages (keras_normreg._compat)."""

import io
import os
import shutil
import stat
import subprocess
import threading

import grpc
import keras_tuner as kt
import pytest

from keras_normreg import _compat
from keras_normreg.tuning import launcher, serving, study

from .conftest import fake_processes, write_tiny_spec

SECRET = "s3cret-for-the-tests-only-0123456789"  # 36 printable ASCII characters
WRONG = "s3cret-for-the-tests-only-0123456780"   # same length, last character differs
KEY = launcher.SECRET_METADATA_KEY
CALL_TIMEOUT = 30  # seconds; a refused call returns at once, this only bounds a broken server
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _oracle(tmp_path, max_trials=2):
    oracle = study.RandomStudyOracle(objective=kt.Objective("val_accuracy", "max"),
                                     max_trials=max_trials, seed=1, worker_timeout=600,
                                     out=io.StringIO())
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters.Float("x", 0.0, 1.0)
    return oracle


class Chief:
    """A chief's gRPC server (study.start_oracle_server) on a free loopback port."""

    def __init__(self, tmp_path, security, host="127.0.0.1", max_trials=2):
        self.oracle = _oracle(tmp_path, max_trials)
        self.err = io.StringIO()
        self.port = launcher.free_port(host)
        self.address = f"127.0.0.1:{self.port}"
        self.server, self.servicer, _ = study.start_oracle_server(
            self.oracle, host, self.port, security=security, err=self.err)

    def stop(self):
        self.server.stop(grace=None)


@pytest.fixture
def chief(tmp_path):
    c = Chief(tmp_path, launcher.OracleSecurity(SECRET))
    yield c
    c.stop()


def _stub(channel):
    return _compat.oracle_stub(channel)


def _requests(trial_id, space):
    """One request per RPC of keras-tuner's oracle service: read the study (GetSpace,
    GetTrial, GetBestTrials), change it (UpdateSpace), take a trial (CreateTrial), report on
    ``trial_id`` (UpdateTrial with a perfect score, EndTrial as COMPLETED)."""
    m = _compat.oracle_messages()
    grown = space.copy()
    grown.Float("injected", 0.0, 1.0)
    ended = kt.engine.trial.Trial(space, trial_id=trial_id, status="COMPLETED")
    return {
        "GetSpace": m.GetSpaceRequest(),
        "GetTrial": m.GetTrialRequest(trial_id=trial_id),
        "GetBestTrials": m.GetBestTrialsRequest(num_trials=1),
        "UpdateSpace": m.UpdateSpaceRequest(hyperparameters=grown.to_proto()),
        "CreateTrial": m.CreateTrialRequest(tuner_id="intruder"),
        "UpdateTrial": m.UpdateTrialRequest(trial_id=trial_id, metrics={"val_accuracy": 1.0},
                                            step=0),
        "EndTrial": m.EndTrialRequest(trial=ended.to_proto()),
    }


def _take_trial(chief):
    """A legitimate worker (the secret on its channel) takes a trial."""
    with study.oracle_channel(chief.address, launcher.OracleSecurity(SECRET)) as channel:
        response = _stub(channel).CreateTrial(
            _compat.oracle_messages().CreateTrialRequest(tuner_id="tuner0"),
            timeout=CALL_TIMEOUT)
    return kt.engine.trial.Trial.from_proto(response.trial)


# ---------------------------------------------------------------- refused without the secret
@pytest.mark.parametrize("metadata", [
    None,                                  # keras-tuner's own client: no secret at all
    [(KEY, WRONG)],                        # a wrong secret
    [(KEY, SECRET[:-1])],                  # a prefix of the secret
    [(KEY, SECRET + "x")],                 # the secret and more
    [("authorization", SECRET)],           # the secret under another key
    [(KEY, SECRET), (KEY, WRONG)],         # the secret and a wrong one
], ids=["none", "wrong", "prefix", "longer", "other-key", "twice"])
def test_calls_without_the_secret_are_refused_and_change_nothing(chief, metadata):
    trial = _take_trial(chief)
    assert trial.status == "RUNNING"
    before = (dict(chief.oracle.trials), dict(chief.oracle.ongoing_trials),
              set(chief.oracle.tuner_ids), chief.oracle.get_space().get_config())
    with grpc.insecure_channel(chief.address) as channel:
        stub = _stub(channel)
        for name, request in _requests(trial.trial_id, chief.oracle.get_space()).items():
            with pytest.raises(grpc.RpcError) as info:
                getattr(stub, name)(request, metadata=metadata, timeout=CALL_TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert "oracle secret" in info.value.details()
    # the study is as it was: no new trial, no report, no new worker, the same space
    assert (dict(chief.oracle.trials), dict(chief.oracle.ongoing_trials),
            set(chief.oracle.tuner_ids), chief.oracle.get_space().get_config()) == before
    held = chief.oracle.trials[trial.trial_id]
    assert held.status == "RUNNING" and not held.metrics.exists("val_accuracy")
    assert chief.servicer.stop_triggered is False
    assert chief.err.getvalue().count("tune: refused a call from") == serving._SecretCheck.SHOWN
    assert "further refusals are not shown" in chief.err.getvalue()


def test_calls_with_the_secret_read_take_and_report(chief):
    m = _compat.oracle_messages()
    with study.oracle_channel(chief.address, launcher.OracleSecurity(SECRET)) as channel:
        stub = _stub(channel)
        space = kt.HyperParameters.from_proto(
            stub.GetSpace(m.GetSpaceRequest(), timeout=CALL_TIMEOUT).hyperparameters)
        assert [p.name for p in space.space] == ["x"]
        trial = kt.engine.trial.Trial.from_proto(
            stub.CreateTrial(m.CreateTrialRequest(tuner_id="tuner0"),
                             timeout=CALL_TIMEOUT).trial)
        assert trial.status == "RUNNING" and 0.0 <= trial.hyperparameters.get("x") <= 1.0
        stub.UpdateTrial(m.UpdateTrialRequest(trial_id=trial.trial_id,
                                              metrics={"val_accuracy": 0.75}, step=0),
                         timeout=CALL_TIMEOUT)
        ended = kt.engine.trial.Trial(space, trial_id=trial.trial_id, status="COMPLETED")
        ended.hyperparameters = trial.hyperparameters
        stub.EndTrial(m.EndTrialRequest(trial=ended.to_proto()), timeout=CALL_TIMEOUT)
        best = stub.GetBestTrials(m.GetBestTrialsRequest(num_trials=1), timeout=CALL_TIMEOUT)
    assert [t.trial_id for t in best.trials] == [trial.trial_id]
    assert chief.oracle.trials[trial.trial_id].status == "COMPLETED"
    assert chief.oracle.trials[trial.trial_id].score == 0.75  # 0.75 is exact in float32/64
    assert chief.err.getvalue() == ""  # nothing refused, nothing to warn about on loopback


def test_keras_tuner_client_is_refused_until_given_the_workers_channel(chief, monkeypatch,
                                                                     tmp_path):
    """The worker path: keras-tuner's OracleClient (its own insecure channel) is refused;
    the same client over study.oracle_channel (what a worker's tuner installs) works, and a
    wrong secret ends the worker with OracleAuthError (one line naming the chief)."""
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(chief.port))
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "w0")
    client = _compat.oracle_client_class()(_oracle(tmp_path / "worker"))
    with pytest.raises(grpc.RpcError) as info:
        client.get_space()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _compat.set_oracle_client_channel(
        client, study.oracle_channel(chief.address, launcher.OracleSecurity(SECRET)))
    assert [p.name for p in client.get_space().space] == ["x"]
    assert client.create_trial("w0").status == "RUNNING"
    _compat.set_oracle_client_channel(
        client, study.oracle_channel(chief.address, launcher.OracleSecurity(WRONG)))
    with pytest.raises(launcher.OracleAuthError,
                       match=rf"The chief at 127.0.0.1:{chief.port} refused this worker: "
                             rf"missing or wrong oracle secret.*Received: "
                             rf"oracle='127.0.0.1:{chief.port}'$"):
        with serving.refused_as(chief.address):
            client.get_best_trials(1)
    assert isinstance(launcher.OracleAuthError("x"), OSError)  # the CLI's clean error path


def test_serve_oracle_ends_when_the_study_does_and_intruders_cannot_stop_it(tmp_path):
    """serve_oracle itself (the chief's loop) with a secret: an intruder's CreateTrial after
    the budget is spent cannot end the search; the worker's own request does."""
    oracle = _oracle(tmp_path, max_trials=1)
    port = launcher.free_port()
    address = f"127.0.0.1:{port}"
    err = io.StringIO()
    serving = threading.Thread(target=study.serve_oracle, args=(oracle, "127.0.0.1", port),
                               kwargs={"poll": 0.05, "err": err,
                                       "security": launcher.OracleSecurity(SECRET)},
                               daemon=True)
    serving.start()
    m = _compat.oracle_messages()
    with study.oracle_channel(address, launcher.OracleSecurity(SECRET)) as channel:
        stub = _stub(channel)
        trial = kt.engine.trial.Trial.from_proto(stub.CreateTrial(
            m.CreateTrialRequest(tuner_id="w0"), wait_for_ready=True, timeout=CALL_TIMEOUT).trial)
        stub.UpdateTrial(m.UpdateTrialRequest(trial_id=trial.trial_id,
                                              metrics={"val_accuracy": 0.5}, step=0),
                         timeout=CALL_TIMEOUT)
        ended = kt.engine.trial.Trial(oracle.get_space(), trial_id=trial.trial_id,
                                      status="COMPLETED")
        ended.hyperparameters = trial.hyperparameters
        stub.EndTrial(m.EndTrialRequest(trial=ended.to_proto()), timeout=CALL_TIMEOUT)
        with grpc.insecure_channel(address) as bare:
            with pytest.raises(grpc.RpcError) as info:
                _stub(bare).CreateTrial(m.CreateTrialRequest(tuner_id="intruder"),
                                        timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        serving.join(timeout=1.0)
        assert serving.is_alive()  # the intruder's request did not end the search
        last = stub.CreateTrial(m.CreateTrialRequest(tuner_id="w0"), timeout=CALL_TIMEOUT)
    assert kt.engine.trial.Trial.from_proto(last.trial).status == "STOPPED"
    serving.join(timeout=60)
    assert not serving.is_alive()
    assert "refused a call from" in err.getvalue()


# ------------------------------------------------------------------------------------ TLS
def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key (openssl), key mode 600."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a self-signed certificate (and no `cryptography`)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return str(cert), str(key)


def test_tls_with_a_self_signed_certificate(tmp_path):
    cert, key = _self_signed(tmp_path)
    chief = Chief(tmp_path, launcher.OracleSecurity(SECRET, tls_cert=cert, tls_key=key))
    m = _compat.oracle_messages()
    try:
        # a worker that trusts the certificate and has the secret
        with study.oracle_channel(chief.address,
                                  launcher.OracleSecurity(SECRET, tls_ca=cert)) as channel:
            space = _stub(channel).GetSpace(m.GetSpaceRequest(), timeout=CALL_TIMEOUT)
        assert [p.name for p in kt.HyperParameters.from_proto(space.hyperparameters).space] \
            == ["x"]
        # TLS but no secret: refused by the secret check
        with study.oracle_channel(chief.address,
                                  launcher.OracleSecurity(tls_ca=cert)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _stub(channel).GetSpace(m.GetSpaceRequest(), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the secret but no TLS: the handshake fails, the call never reaches the oracle
        with study.oracle_channel(chief.address, launcher.OracleSecurity(SECRET)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _stub(channel).CreateTrial(m.CreateTrialRequest(tuner_id="plain"),
                                           timeout=CALL_TIMEOUT)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
        assert chief.oracle.trials == {} and chief.oracle.tuner_ids == set()
    finally:
        chief.stop()
    assert chief.err.getvalue().count("refused a call from") == 1


# ---------------------------------------------------------------- the insecure-refusal rule
def test_non_loopback_chief_without_a_secret_refuses_to_start(tmp_path):
    oracle = _oracle(tmp_path)
    port = launcher.free_port("0.0.0.0")
    for security in (None, launcher.OracleSecurity()):
        with pytest.raises(ValueError, match=rf"Refusing to serve the oracle on 0.0.0.0:{port}.*"
                                             rf"--oracle-secret-file.*--insecure.*"
                                             rf"Received: oracle='0.0.0.0:{port}'$"):
            study.start_oracle_server(oracle, "0.0.0.0", port, security=security)
        with pytest.raises(ValueError, match="Refusing to serve"):
            study.serve_oracle(oracle, "0.0.0.0", port, security=security)
    assert oracle.serving is False
    launcher.free_port("0.0.0.0")  # nothing was left listening
    # loopback without a secret is allowed (the machine's own users only)
    launcher.check_chief("127.0.0.1", port, None)
    launcher.check_chief("localhost", port, launcher.OracleSecurity())


@pytest.mark.parametrize("security,warning", [
    ("insecure", "with no authentication (--insecure)"),
    ("secret", "without TLS: its calls, the secret included, cross the network in clear"),
])
def test_non_loopback_chief_starts_with_a_secret_or_the_opt_in_and_warns(tmp_path, security,
                                                                         warning):
    sec = (launcher.OracleSecurity(insecure=True) if security == "insecure"
           else launcher.OracleSecurity(SECRET))
    chief = Chief(tmp_path, sec, host="0.0.0.0")
    chief.stop()
    text = chief.err.getvalue()
    assert text.count("\n") == 1 and warning in text, text
    assert f"ssh -N -L {chief.port}:127.0.0.1:{chief.port}" in text


def test_non_loopback_chief_with_a_secret_and_tls_does_not_warn(tmp_path):
    cert, key = _self_signed(tmp_path)
    assert launcher.exposure_warning("10.1.2.3", 8000, secret=True, tls=True) is None
    chief = Chief(tmp_path, launcher.OracleSecurity(SECRET, tls_cert=cert, tls_key=key),
                  host="0.0.0.0")
    chief.stop()
    assert chief.err.getvalue() == ""


def test_run_study_chief_refuses_before_anything_runs(tmp_path):
    path = write_tiny_spec(tmp_path)
    with pytest.raises(ValueError, match=r"Refusing to serve the oracle on 0.0.0.0:8123.*"
                                         r"Received: oracle='0.0.0.0:8123'$"):
        study.run_study(path, role="chief", oracle="0.0.0.0:8123")
    assert not os.path.exists(tmp_path / "runs")  # no folder, no lock, no tuner
    with pytest.raises(ValueError, match=r"--role chief\|worker.*Received: secret=<hidden>$"):
        study.run_study(path, secret=SECRET)
    with pytest.raises(ValueError, match=r"Received: insecure=True$"):
        study.run_study(path, insecure=True)


def test_tls_certificate_without_its_key_is_refused(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValueError, match=r"--tls-key.*Received: tls_key=None$"):
        launcher.check_chief("127.0.0.1", 1, launcher.oracle_security(tls_cert=str(cert),
                                                                       env={}))
    with pytest.raises(ValueError, match=r"needs its certificate.*Received: tls_cert=None"):
        key = tmp_path / "key.pem"
        key.write_text("k")
        key.chmod(0o600)
        launcher.oracle_security(tls_key=str(key), env={})
    with pytest.raises(ValueError, match=r"does not exist. Received: tls_ca="):
        launcher.oracle_security(tls_ca=str(tmp_path / "missing.pem"), env={})


# ------------------------------------------------------------------ the secret and its file
@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o010])
def test_secret_file_open_to_group_or_others_is_refused(tmp_path, mode):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    with pytest.raises(ValueError) as info:
        launcher.read_secret_file(str(path))
    text = str(info.value)
    assert f"has mode {mode:04o}" in text and f"chmod 600 {path}" in text
    assert text.endswith(f"Received: secret_file={str(path)!r}")
    assert SECRET not in text
    with pytest.raises(ValueError, match="has mode"):  # the same through the environment
        launcher.oracle_security(env={launcher.SECRET_FILE_ENV: str(path)})


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_secret_file_is_read(tmp_path, mode):
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n")
    path.chmod(mode)
    assert launcher.read_secret_file(str(path)) == SECRET
    assert launcher.oracle_security(secret_file=str(path), env={}).secret == SECRET
    assert launcher.oracle_security(env={launcher.SECRET_FILE_ENV: str(path)}).secret == SECRET


@posix_only
def test_tls_key_open_to_others_is_refused(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("k")
    key.chmod(0o644)
    with pytest.raises(ValueError, match=rf"TLS private key {key} has mode 0644.*"
                                         rf"Received: tls_key={str(key)!r}$"):
        launcher.oracle_security(tls_key=str(key), env={})


@pytest.mark.parametrize("content,match", [
    ("", "is empty"),
    ("short", "at least 16 characters"),
    ("has a space inside, long enough", "printable ASCII without spaces"),
])
def test_bad_secret_file_contents(tmp_path, content, match):
    path = tmp_path / "secret"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match=match) as info:
        launcher.read_secret_file(str(path))
    assert content == "" or content not in str(info.value)


def test_missing_secret_file(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=rf"cannot be read.*Received: secret_file={path!r}$"):
        launcher.read_secret_file(path)


@pytest.mark.parametrize("secret", ["short", "é" * 20, "tab\tinside-a-long-secret", 12345])
def test_bad_secrets_never_shown(secret):
    with pytest.raises(ValueError, match=r"Received: secret=<") as info:
        launcher.OracleSecurity(secret)
    assert str(secret) not in str(info.value)


def test_secret_sources_and_precedence(tmp_path):
    other = "another-secret-of-enough-length"
    env = {launcher.SECRET_ENV: other}
    assert launcher.oracle_security(env=env).secret == other
    assert launcher.oracle_security(secret=SECRET, env=env).secret == SECRET
    assert launcher.oracle_security(env={}).secret is None
    with pytest.raises(ValueError, match=f"Set one of {launcher.SECRET_ENV} and "
                                         f"{launcher.SECRET_FILE_ENV}, not both"):
        launcher.oracle_security(env={**env, launcher.SECRET_FILE_ENV: "f"})
    with pytest.raises(ValueError, match="not both. Received: secret=<hidden>, secret_file='f'"):
        launcher.oracle_security(secret=SECRET, secret_file="f", env={})
    with pytest.raises(ValueError, match=rf"Received: {launcher.SECRET_ENV}=<hidden, 3 char"):
        launcher.oracle_security(env={launcher.SECRET_ENV: "abc"})
    sec = launcher.OracleSecurity(SECRET)
    assert SECRET not in repr(sec) and "secret=<hidden>" in repr(sec)


# ------------------------------------------------------------------------------ the launcher
def _fake_processes(monkeypatch):
    """The launcher's Popen replaced: records (command, environment) and 'exits' with 0."""
    started = []
    fake_processes(monkeypatch,
                   lambda cmd, kwargs: started.append((list(cmd), dict(kwargs["env"]))))
    for key in launcher.SECURITY_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return started


def _secrets_passed(started):
    values = [env.get(launcher.SECRET_ENV) for _, env in started]
    for cmd, env in started:
        assert all(env[launcher.SECRET_ENV] not in arg for arg in cmd)  # not visible in ps
        assert launcher.SECRET_FILE_ENV not in env
    return values


def test_run_local_gives_chief_and_workers_a_random_secret_in_their_environment(
        tmp_path, monkeypatch):
    started = _fake_processes(monkeypatch)
    assert launcher.run_local("study.toml", 2, project_dir=str(tmp_path / "p"),
                              out=io.StringIO()) == 0
    roles = [cmd[cmd.index("--role") + 1] for cmd, _ in started]
    assert roles == ["chief", "worker", "worker"]
    first = _secrets_passed(started)
    assert len(set(first)) == 1 and len(first[0]) >= 43  # token_urlsafe(32): 43 characters
    launcher.check_secret(first[0])
    started.clear()
    launcher.run_local("study.toml", 1, project_dir=str(tmp_path / "p"), out=io.StringIO())
    second = _secrets_passed(started)
    assert len(set(second)) == 1 and second[0] != first[0]  # a new one per run


@posix_only
def test_run_local_passes_a_given_secret_file_and_tls_as_variables(tmp_path, monkeypatch):
    started = _fake_processes(monkeypatch)
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    monkeypatch.setenv(launcher.SECRET_FILE_ENV, str(path))
    cert = tmp_path / "cert.pem"
    cert.write_text("c")
    key = tmp_path / "key.pem"
    key.write_text("k")
    key.chmod(0o600)
    assert launcher.run_local("study.toml", 1, project_dir=str(tmp_path / "p"),
                              tls_cert=str(cert), tls_key=str(key), out=io.StringIO()) == 0
    assert _secrets_passed(started) == [SECRET, SECRET]
    for _, env in started:
        assert env[launcher.TLS_CERT_ENV] == str(cert)
        assert env[launcher.TLS_KEY_ENV] == str(key)
        assert launcher.TLS_CA_ENV not in env
    key.chmod(0o644)
    with pytest.raises(ValueError, match="has mode 0644"):
        launcher.run_local("study.toml", 1, project_dir=str(tmp_path / "p"),
                           tls_cert=str(cert), tls_key=str(key))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# ------------------------------------------------------------------ real processes (slow)
@pytest.mark.slow
def test_worker_with_a_wrong_secret_exits_with_one_clear_line(tmp_path):
    """`keras-normreg tune --role chief/worker` as processes: the chief has a secret from its
    environment, a worker with another one is refused, says so in one line and exits 2."""
    from .conftest import ROOT, kill_all, tune_cmd, tune_env

    path = write_tiny_spec(tmp_path, output={"export": False})
    address = f"127.0.0.1:{launcher.free_port()}"
    log = open(tmp_path / "chief.log", "w")
    chief = subprocess.Popen(tune_cmd(path, "--role", "chief", "--oracle", address),
                             cwd=ROOT, env={**tune_env(), launcher.SECRET_ENV: SECRET},
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        worker = subprocess.run(tune_cmd(path, "--role", "worker", "--oracle", address,
                                         "--worker-id", "w0"),
                                cwd=ROOT, env={**tune_env(), launcher.SECRET_ENV: WRONG},
                                capture_output=True, text=True, timeout=300)
    finally:
        kill_all([chief])
        log.close()
    assert worker.returncode == 2, worker.stdout[-2000:] + worker.stderr[-2000:]
    assert (f"keras-normreg tune: error: The chief at {address} refused this worker: missing "
            f"or wrong oracle secret") in worker.stderr
    assert "Traceback" not in worker.stderr
    assert "refused a call from" in (tmp_path / "chief.log").read_text()
    assert not list((tmp_path / "runs" / "tiny_digits").glob("trial_*"))  # no trial given
