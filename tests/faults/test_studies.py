"""Studies under faults, with real processes and real signals on the tiny digits study:
a finished study reruns nothing, SIGTERM to the launcher leaves no process behind, a silent
worker's trial is handed to another, one chief per study, the oracle's exposure warning and an
unwritable study folder."""

import contextlib
import glob
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from keras_normreg import saving
from keras_normreg._locks import LockError
from keras_normreg.tuning import launcher, study
from keras_normreg.tuning import spec as nr_spec
from tests.tuning.conftest import (
    ROOT,
    children,
    cmdline,
    kill_all,
    mid_trial,
    read_trials,
    tune_cmd,
    tune_env,
    wait_for,
    write_tiny_spec,
)

TIMEOUT = 300  # seconds for a whole study; every process is killed on failure

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


def _alive(pid) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _fingerprint(project):
    """{path: (mtime_ns, sha256)} of every trial's files (results, checkpoints, trial.json)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(project, "trial_*", "*"))):
        with open(path, "rb") as f:
            out[path] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def _oracle_state(project):
    with open(os.path.join(project, "oracle.json")) as f:
        return json.load(f)


def _check_every_trial_once(project, budget, text=None):
    trials = list(read_trials(project).values())
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == len(set(ids)) == budget, ids
    assert all(t["status"] == "COMPLETED" for t in trials), [t["status"] for t in trials]
    state = _oracle_state(project)
    assert sorted(state["end_order"]) == sorted(ids), state["end_order"]  # no duplicates
    assert state["ongoing_trials"] == {} and state["retry_queue"] == []
    results = read_trials(project, "result.json")
    assert set(results) == set(ids)
    if text is not None:
        for k in range(1, budget + 1):
            assert text.count(f"trial {k}/{budget} done") == 1, text


# --------------------------------------------------------------------- (a) finished: rerun
@pytest.mark.slow
def test_finished_study_reruns_nothing(tmp_path):
    """A finished distributed study, run again (chief + workers, then one process): says it
    is finished, starts no trial, leaves every trial file as it was, no duplicate in the end
    order."""
    budget = 3
    path = write_tiny_spec(tmp_path, output={"export": False})
    project = str(tmp_path / "runs" / "tiny_digits")
    first = subprocess.run(tune_cmd(path, "--workers", "2", "--max-trials", str(budget)), cwd=ROOT,
                           env=tune_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _check_every_trial_once(project, budget, first.stdout)
    before = _fingerprint(project)
    assert len(before) >= 3 * budget  # trial.json, result.json, recipe.toml, checkpoint...
    for args in (["--workers", "2"], []):
        again = subprocess.run(tune_cmd(path, "--max-trials", str(budget), *args), cwd=ROOT,
                               env=tune_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert f"{budget}/{budget} trials done" in again.stdout
        assert "finished, nothing to run" in again.stdout
        assert " started" not in again.stdout and "done, best" not in again.stdout
        assert _fingerprint(project) == before
        _check_every_trial_once(project, budget)


# ------------------------------------------------------------- (b) SIGTERM to the launcher
@pytest.mark.slow
@needs_proc
def test_sigterm_to_the_launcher_stops_everything_and_the_rerun_completes(tmp_path):
    budget = 4
    path = write_tiny_spec(tmp_path, output={"export": False}, base={"train": {"epochs": 2}})
    project = str(tmp_path / "runs" / "tiny_digits")
    log = open(tmp_path / "launcher.log", "w")
    err = open(tmp_path / "launcher.err", "w")
    proc = subprocess.Popen(tune_cmd(path, "--workers", "2", "--max-trials", str(budget)), cwd=ROOT,
                            env=tune_env(), stdout=log, stderr=err)
    kids = []
    try:
        wait_for(lambda: mid_trial(project), [proc], TIMEOUT,
                  "a completed trial and a running one")
        kids = children(proc.pid)
        roles = sorted(cmdline(k).split("--role ")[1].split()[0] for k in kids)
        assert roles == ["chief", "worker", "worker"], [cmdline(k) for k in kids]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        kill_all([proc])
        log.close()
        err.close()
    assert proc.returncode == 128 + signal.SIGTERM
    lines = [ln for ln in open(tmp_path / "launcher.err").read().splitlines() if ln.strip()]
    assert any(ln.startswith("tune: stopped by SIGTERM: the chief and 2 worker(s)")
               for ln in lines), lines
    assert "Traceback" not in open(tmp_path / "launcher.err").read()
    assert not [k for k in kids if _alive(k)], [(k, cmdline(k)) for k in kids]
    assert not os.path.exists(os.path.join(project, launcher.LOCK_FILE))  # released
    again = subprocess.run(tune_cmd(path, "--workers", "2", "--max-trials", str(budget)), cwd=ROOT,
                           env=tune_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _check_every_trial_once(project, budget)


@pytest.mark.slow
@needs_proc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_sigkilled_launcher_leaves_no_process_behind(tmp_path):
    """SIGKILL cannot be handled by the launcher: its chief and workers must still stop
    (PR_SET_PDEATHSIG), within 15 s. The study is sized so that it cannot end by itself in
    that time (40 trials of 30 epochs; a trial of 2 epochs takes a few seconds here): without
    the death signal the chief and workers were measured still training 15 s later."""
    budget = 40
    path = write_tiny_spec(tmp_path, output={"export": False}, base={"train": {"epochs": 30}})
    project = str(tmp_path / "runs" / "tiny_digits")
    with open(tmp_path / "launcher.log", "w") as log:
        proc = subprocess.Popen(tune_cmd(path, "--workers", "2", "--max-trials", str(budget)),
                                cwd=ROOT, env=tune_env(), stdout=log, stderr=subprocess.STDOUT)
        kids = []
        try:
            wait_for(lambda: any(t["status"] == "RUNNING" for t in read_trials(project).values()),
                     [proc], TIMEOUT, "a running trial")
            kids = children(proc.pid)
            assert len(kids) == 3, [cmdline(k) for k in kids]  # the chief and 2 workers
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(_alive(k) for k in kids):
                time.sleep(0.2)
            alive = [(k, cmdline(k)) for k in kids if _alive(k)]
            done = sum(t["status"] == "COMPLETED" for t in read_trials(project).values())
        finally:
            for k in kids:  # never leave one behind, even when the check fails
                with contextlib.suppress(OSError):
                    os.kill(k, signal.SIGKILL)
            kill_all([proc])
    assert proc.returncode == -signal.SIGKILL
    assert not alive, alive
    assert done < budget  # stopped by the death signal, not by the end of the study


@pytest.mark.slow
@needs_proc
def test_launcher_whose_chief_dies_stops_the_workers_and_says_so(tmp_path):
    path = write_tiny_spec(tmp_path, output={"export": False})
    project = str(tmp_path / "runs" / "tiny_digits")
    proc = subprocess.Popen(tune_cmd(path, "--workers", "2", "--max-trials", "4"), cwd=ROOT,
                            env=tune_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    kids = []
    try:
        wait_for(lambda: os.path.isfile(os.path.join(project, "oracle.json")), [proc], TIMEOUT,
                  "the chief")
        kids = children(proc.pid)
        chief = [k for k in kids if "--role chief" in cmdline(k)]
        assert len(chief) == 1 and len(kids) == 3
        os.kill(chief[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_all([proc])
    assert proc.returncode == 128 + signal.SIGKILL
    lines = [ln for ln in err.splitlines() if ln.startswith("tune: error:")]
    assert len(lines) == 1, err
    assert "the chief was killed by SIGKILL" in lines[0]
    assert os.path.join(project, "chief.log") in lines[0]
    assert "Traceback" not in err
    assert not [k for k in kids if _alive(k)], [(k, cmdline(k)) for k in kids]


# --------------------------------------------------------- (c) a worker that never returns
@pytest.mark.slow
@pytest.mark.parametrize("comes_back", [False, True], ids=["stopped-for-good", "comes-back"])
def test_stopped_worker_trial_is_retried_elsewhere(tmp_path, comes_back):
    """A chief and two workers (processes of this test); one worker is SIGSTOPped while it
    runs a trial: with worker_timeout = 5 s the chief hands its trial to the other worker and
    the study ends with every trial exactly once, whether the stopped worker never returns or
    is resumed after the handover (it then drops the trial and writes nothing)."""
    budget = 4
    path = write_tiny_spec(tmp_path, output={"export": False}, base={"train": {"epochs": 3}},
                           distributed={"worker_timeout": 5})
    project = str(tmp_path / "runs" / "tiny_digits")
    address = f"127.0.0.1:{launcher.free_port()}"
    chief_log = open(tmp_path / "chief.log", "w")
    chief = subprocess.Popen(tune_cmd(path, "--role", "chief", "--oracle", address,
                                  "--max-trials", str(budget)),
                             cwd=ROOT, env=tune_env(), stdout=chief_log, stderr=subprocess.STDOUT)
    logs, workers = {}, {}
    for wid in ("w0", "w1"):
        logs[wid] = open(tmp_path / f"{wid}.log", "w")
        workers[wid] = subprocess.Popen(
            tune_cmd(path, "--role", "worker", "--oracle", address, "--worker-id", wid,
                 "--max-trials", str(budget)),
            cwd=ROOT, env=tune_env(), stdout=logs[wid], stderr=subprocess.STDOUT)
    procs = [chief, *workers.values()]
    try:
        def w0_runs():
            try:
                return "w0" in _oracle_state(project)["ongoing_trials"]
            except (OSError, ValueError, KeyError):
                return False

        while True:
            wait_for(w0_runs, procs, TIMEOUT, "w0 running a trial")
            os.kill(workers["w0"].pid, signal.SIGSTOP)
            held = _oracle_state(project)["ongoing_trials"].get("w0")
            if held is not None:
                break
            os.kill(workers["w0"].pid, signal.SIGCONT)  # it had just finished: try again
        wait_for(lambda: f"trial {held} handed back" in open(tmp_path / "chief.log").read(),
                  [chief], TIMEOUT, "the chief handing w0's trial back")
        if comes_back:
            # w0 comes back while the study still runs: its heartbeat learns that the trial
            # is no longer its own; it stops training it and writes nothing
            os.kill(workers["w0"].pid, signal.SIGCONT)
        chief.wait(timeout=TIMEOUT)
        workers["w1"].wait(timeout=60)
        if comes_back:
            workers["w0"].wait(timeout=60)
    finally:
        kill_all(procs)
        for f in (chief_log, *logs.values()):
            f.close()
    text = open(tmp_path / "chief.log").read()
    assert chief.returncode == 0, text[-3000:]
    assert workers["w1"].returncode == 0
    assert "worker w0 silent for" in text and f"trial {held} handed back" in text, text
    _check_every_trial_once(project, budget, text)
    assert read_trials(project, "result.json")[held]["tuner_id"] == "w1"
    if comes_back:
        w0 = open(tmp_path / "w0.log").read()
        assert workers["w0"].returncode == 0, w0[-3000:]
        assert f"trial {held} was handed to another worker" in w0, w0[-3000:]


# -------------------------------------------------------------- (d) one chief per study
def test_second_run_on_a_running_study_is_refused(tmp_path):
    """While a chief (here: another process holding the study lock) runs, a one-process run, a
    chief and a launcher are refused before they touch anything, with the holder in the message.
    (The lock is re-entrant within one process, so the holder must be another process.)"""
    path = write_tiny_spec(tmp_path)
    spec = nr_spec.load_study(path)
    project = nr_spec.project_dir(spec)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from keras_normreg._locks import FileLock; "
         "lock = FileLock(sys.argv[1], sys.argv[2]).acquire(); print('held', flush=True); "
         "time.sleep(300)",
         os.path.join(project, launcher.LOCK_FILE), f"study {project}"],
        cwd=ROOT, env=tune_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for role, oracle in ((None, None), ("chief", f"127.0.0.1:{launcher.free_port()}")):
            with pytest.raises(LockError, match=rf"study {project} is in use by pid "
                                                rf"{holder.pid}"):
                study.run_study(spec, role=role, oracle=oracle, overwrite=True,
                                out=io.StringIO())
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            launcher.run_local(path, 1, project_dir=project, overwrite=True, out=io.StringIO())
        assert os.listdir(project) == [launcher.LOCK_FILE]  # nothing deleted, nothing started
    finally:
        holder.kill()
        holder.wait()
    launcher.check_study_free(project)  # released when its holder died


@pytest.mark.slow
def test_second_chief_process_is_refused(tmp_path):
    path = write_tiny_spec(tmp_path, output={"export": False})
    project = str(tmp_path / "runs" / "tiny_digits")
    first = subprocess.Popen(tune_cmd(path, "--role", "chief", "--oracle",
                                  f"127.0.0.1:{launcher.free_port()}"),
                             cwd=ROOT, env=tune_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.isfile(os.path.join(project, "oracle.json")), [first],
                  TIMEOUT, "the first chief")
        second = subprocess.run(tune_cmd(path, "--role", "chief", "--oracle",
                                     f"127.0.0.1:{launcher.free_port()}"),
                                cwd=ROOT, env=tune_env(), capture_output=True, text=True,
                                timeout=TIMEOUT)
        assert first.poll() is None
    finally:
        kill_all([first])
    assert second.returncode != 0
    assert f"study {project} is in use by pid {first.pid}" in second.stderr, second.stderr


# ------------------------------------------------------------- (e) who can reach the oracle
@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.5.0.1", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("192.168.0.7", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert launcher.is_loopback(host) is loopback


def test_non_loopback_bind_warns_once_on_stderr(capsys):
    assert launcher.warn_if_exposed("127.0.0.1", 8000) is False
    assert capsys.readouterr().err == ""
    assert launcher.warn_if_exposed("0.0.0.0", 8000) is True
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one paragraph
    for words in ("0.0.0.0:8000", "no authentication", "read the study", "insert",
                  "private network", "ssh -N -L 8000:127.0.0.1:8000", "--oracle 127.0.0.1:8000"):
        assert words in err, words


def test_chief_bound_to_all_interfaces_warns(monkeypatch):
    """serve_oracle itself refuses 0.0.0.0 without a secret, and warns when it binds it with
    the insecure opt-in (a chief whose search is over)."""

    class Done:  # an oracle with nothing left to serve
        ongoing_trials, tuner_ids, _retry_queue = {}, set(), []

    class Servicer:
        stop_triggered = True

    monkeypatch.setattr(study._compat, "oracle_servicer",
                        lambda oracle: (Servicer(), lambda servicer, server: None,
                                        lambda oracle: True))
    port = launcher.free_port("0.0.0.0")
    with pytest.raises(ValueError, match="Refusing to serve the oracle on 0.0.0.0"):
        study.serve_oracle(Done(), "0.0.0.0", port, err=io.StringIO())
    err = io.StringIO()
    study.serve_oracle(Done(), "0.0.0.0", port, err=err,
                       security=launcher.OracleSecurity(insecure=True))
    assert "no authentication" in err.getvalue()
    err = io.StringIO()
    study.serve_oracle(Done(), "127.0.0.1", launcher.free_port(), err=err)
    assert err.getvalue() == ""


# ---------------------------------------------------------------- (f) unwritable folders
def test_unwritable_study_folder_is_a_clean_error_before_any_trial(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    path = write_tiny_spec(tmp_path, output={"directory": str(tmp_path / "afile" / "runs"),
                                             "export_dir": str(tmp_path / "saved")})
    with pytest.raises(saving.DestinationError,
                       match=r"Cannot write the study into .*afile/runs.*output.directory.*"
                             r"Received: output.directory="):
        study.run_study(path, out=io.StringIO())
    with pytest.raises(ValueError, match="Received: --directory="):
        study.run_study(path, directory=str(tmp_path / "afile" / "d"), out=io.StringIO())
    path = write_tiny_spec(tmp_path, output={"directory": str(tmp_path / "runs"),
                                             "export_dir": str(tmp_path / "afile" / "saved")})
    with pytest.raises(ValueError, match="Received: output.export_dir="):
        study.run_study(path, out=io.StringIO())
    assert not glob.glob(str(tmp_path / "runs" / "*" / "trial_*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_study_folder_is_a_clean_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    path = write_tiny_spec(tmp_path, output={"directory": str(ro)})
    try:
        with pytest.raises(saving.DestinationError, match="Received: output.directory="):
            study.run_study(path, out=io.StringIO())
    finally:
        ro.chmod(0o755)


def test_unwritable_study_folder_from_the_cli(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    path = write_tiny_spec(tmp_path)
    proc = subprocess.run(tune_cmd(path, "--directory", str(tmp_path / "afile" / "runs")),
                          cwd=ROOT, env=tune_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("keras-normreg tune")]
    assert len(lines) == 1 and "Cannot write the study into" in lines[0], proc.stderr
