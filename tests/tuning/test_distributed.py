"""Distributed tuning on 127.0.0.1: a chief and workers as subprocesses (bounded by timeouts)."""

import io
import json
import os
import signal
import subprocess

import pytest

from keras_normreg.tuning import launcher

from .conftest import (
    ROOT,
    children,
    cmdline,
    fake_processes,
    kill_all,
    mid_trial,
    read_trials,
    tune_cmd,
    tune_env,
    wait_for,
    write_tiny_spec,
)

TIMEOUT = 240  # seconds for a whole study; every process is killed on failure


def _trials(project):
    return list(read_trials(project).values())


def _results(project):
    return read_trials(project, "result.json")


def test_chief_and_two_workers_record_every_trial_once(tmp_path):
    path = write_tiny_spec(tmp_path, output={"export": False})
    proc = subprocess.run(tune_cmd(path, "--workers", "2", "--max-trials", "5"), cwd=ROOT,
                          env=tune_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    project = str(tmp_path / "runs" / "tiny_digits")
    trials = _trials(project)
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert all(t["status"] == "COMPLETED" for t in trials)
    # distinct configurations (random search never repeats one)
    points = {json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in trials}
    assert len(points) == 5
    # every trial was trained by one of the two workers, and reported once by the chief
    results = _results(project)
    assert set(results) == set(ids)
    assert {r["tuner_id"] for r in results.values()} <= {"tuner0", "tuner1"}
    for k in range(1, 6):
        assert proc.stdout.count(f"trial {k}/5 done") == 1, proc.stdout
    assert "heatmap: " in proc.stdout and os.path.isfile(os.path.join(project, "leaderboard.csv"))
    logs = sorted(os.listdir(os.path.join(project, "workers")))
    assert logs == ["tuner0.log", "tuner1.log"]


def test_killed_worker_restarts_and_no_completed_trial_is_lost(tmp_path):
    budget = 5
    path = write_tiny_spec(tmp_path, output={"export": False}, base={"train": {"epochs": 2}})
    project = str(tmp_path / "runs" / "tiny_digits")
    address = f"127.0.0.1:{launcher.free_port()}"
    log = open(tmp_path / "chief.log", "w")
    chief = subprocess.Popen(tune_cmd(path, "--role", "chief", "--oracle", address,
                                  "--max-trials", str(budget)),
                             cwd=ROOT, env=tune_env(), stdout=log, stderr=subprocess.STDOUT)

    def worker():
        return subprocess.Popen(tune_cmd(path, "--role", "worker", "--oracle", address,
                                     "--worker-id", "w0", "--max-trials", str(budget)),
                                cwd=ROOT, env=tune_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    procs = [chief, worker()]
    try:
        def completed():
            return {t["trial_id"]: t["score"] for t in _trials(project)
                    if t["status"] == "COMPLETED"}

        def mid_trial():  # >= 2 trials completed and the next one running
            ts = _trials(project)
            return (sum(t["status"] == "COMPLETED" for t in ts) >= 2
                    and any(t["status"] == "RUNNING" for t in ts))

        wait_for(mid_trial, procs, TIMEOUT, "two completed trials and a running one")
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=30)
        before = completed()
        running = [t["trial_id"] for t in _trials(project) if t["status"] == "RUNNING"]
        assert len(before) >= 2 and len(running) == 1
        procs.append(worker())  # the same id: the chief hands it its unfinished trial
        chief.wait(timeout=TIMEOUT)
        assert chief.returncode == 0, open(tmp_path / "chief.log").read()[-3000:]
        procs[-1].wait(timeout=60)
    finally:
        kill_all(procs)
        log.close()
    trials = _trials(project)
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == budget and len(set(ids)) == budget
    assert all(t["status"] == "COMPLETED" for t in trials)
    after = completed()
    assert {tid: after[tid] for tid in before} == before  # nothing completed was lost or redone
    assert running[0] in after  # the interrupted trial was finished by the restarted worker
    text = open(tmp_path / "chief.log").read()
    for k in range(1, budget + 1):
        assert text.count(f"trial {k}/{budget} done") == 1, text


@pytest.mark.parametrize("address", ["127.0.0.1:notaport", "nohost"])
def test_bad_oracle_address_is_a_clear_error(tmp_path, address, capsys):
    from keras_normreg import cli

    path = write_tiny_spec(tmp_path)
    assert cli.main(["tune", path, "--role", "worker", "--oracle", address]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_launcher_restarts_a_killed_worker(tmp_path):
    budget = 4
    path = write_tiny_spec(tmp_path, output={"export": False}, base={"train": {"epochs": 2}})
    project = str(tmp_path / "runs" / "tiny_digits")
    out = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen(tune_cmd(path, "--workers", "1", "--max-trials", str(budget)), cwd=ROOT,
                            env=tune_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: mid_trial(project), [proc], TIMEOUT,
                  "a completed trial and a running one")
        workers = [p for p in children(proc.pid) if "--role worker" in cmdline(p)]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        kill_all([proc])
        out.close()
    text = open(tmp_path / "launcher.log").read()
    assert proc.returncode == 0, text[-3000:]
    assert "worker tuner0 exited with -9; restarting it (1/3)" in text
    trials = _trials(project)
    assert len({t["trial_id"] for t in trials}) == len(trials) == budget
    assert all(t["status"] == "COMPLETED" for t in trials)


@pytest.mark.slow
def test_interrupted_study_resumes_under_workers(tmp_path):
    """A one-process study killed mid-trial resumes (here with a chief and a worker): the
    interrupted trial is re-run, the completed ones are kept."""
    budget = 4
    path = write_tiny_spec(tmp_path, output={"export": False}, base={"train": {"epochs": 2}})
    project = str(tmp_path / "runs" / "tiny_digits")
    proc = subprocess.Popen(tune_cmd(path, "--max-trials", str(budget)), cwd=ROOT, env=tune_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: mid_trial(project), [proc], TIMEOUT,
                  "a completed trial and a running one")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_all([proc])
    before = {t["trial_id"]: t["score"] for t in _trials(project) if t["status"] == "COMPLETED"}
    again = subprocess.run(tune_cmd(path, "--max-trials", str(budget), "--workers", "1"), cwd=ROOT,
                           env=tune_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{len(before)}/{budget} trials done" in again.stdout
    trials = _trials(project)
    assert len({t["trial_id"] for t in trials}) == len(trials) == budget
    assert all(t["status"] == "COMPLETED" for t in trials)
    assert {t["trial_id"]: t["score"] for t in trials if t["trial_id"] in before} == before


@pytest.mark.parametrize("workers,available,expected", [
    (2, {0, 1}, [{0}, {1}]),
    (2, {0, 1, 2, 3}, [{0, 1}, {2, 3}]),
    (3, {4, 5, 6, 7, 8}, [{4, 5}, {6}, {7, 8}]),  # bounds round(0), round(5/3), round(10/3)
    (3, {0, 1}, [{0}, {1}, {0}]),                  # fewer CPUs than workers: shared
    (1, {3, 5}, [{3, 5}]),
])
def test_worker_cpus_split(workers, available, expected):
    assert launcher.worker_cpus(workers, available) == expected


@pytest.mark.parametrize("workers,available,shares,expected", [
    (1, {0, 1}, 2, [{0}]),                      # 1 of 2 equal machines
    (2, {0, 1}, 2, [{0}, {1}]),
    (1, {0, 1, 2, 3}, 2, [{0, 1}]),
    (2, {0, 1, 2, 3, 4, 5}, 3, [{0, 1}, {2, 3}]),
    (2, {0}, 2, [{0}, {0}]),                    # fewer CPUs than shares: shared
])
def test_worker_cpus_shares(workers, available, shares, expected):
    assert launcher.worker_cpus(workers, available, shares=shares) == expected


def test_worker_cpus_errors():
    with pytest.raises(ValueError, match="Received: workers=0"):
        launcher.worker_cpus(0, {0})
    with pytest.raises(ValueError, match="No CPU to pin workers to"):
        launcher.worker_cpus(1, set())
    with pytest.raises(ValueError, match="`pin_cpus` must be a bool. Received: pin_cpus='yes'"):
        launcher.run_local("study.toml", 2, project_dir="unused", pin_cpus="yes")
    with pytest.raises(ValueError, match=r"`shares` must be an integer >= workers \(2\). "
                                         r"Received: shares=1"):
        launcher.worker_cpus(2, {0, 1}, shares=1)
    with pytest.raises(ValueError, match="Received: shares=True"):
        launcher.worker_cpus(1, {0, 1}, shares=True)
    with pytest.raises(ValueError, match="`cpu_shares` needs pin_cpus=True. Received: "
                                         "cpu_shares=2, pin_cpus=False"):
        launcher.run_local("study.toml", 1, project_dir="unused", cpu_shares=2)
    with pytest.raises(ValueError, match=r"`cpu_shares` must be an integer >= workers \(2\). "
                                         r"Received: cpu_shares=1"):
        launcher.run_local("study.toml", 2, project_dir="unused", pin_cpus=True, cpu_shares=1)


def _fake_processes(monkeypatch, record):
    """The launcher's Popen replaced; ``record(cmd, preexec_fn)`` sees each start."""
    fake_processes(monkeypatch, lambda cmd, kwargs: record(cmd, kwargs.get("preexec_fn")))


@pytest.mark.parametrize("workers,cpu_shares,expected", [
    (2, None, [{0}, {0}, {1}]),   # chief with worker 0, each worker on its own CPU
    (1, None, [{0, 1}, {0, 1}]),  # one share: everything
    (1, 2, [{0}, {0}]),           # one of two emulated machines
])
def test_run_local_pins_workers_and_chief(tmp_path, monkeypatch, workers, cpu_shares, expected):
    """pin_cpus=True gives every process a preexec_fn calling sched_setaffinity with its share:
    the chief shares worker 0's (the fake Popen runs the preexec_fn against a fake
    sched_setaffinity)."""
    calls, pinned = [], []

    def record(cmd, preexec_fn):
        calls.append(cmd)
        if preexec_fn is None:
            pinned.append(None)
        else:
            preexec_fn()

    _fake_processes(monkeypatch, record)
    monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(launcher.os, "sched_setaffinity",
                        lambda pid, mask: pinned.append(set(mask)), raising=False)
    rc = launcher.run_local("study.toml", workers, project_dir=str(tmp_path / "p"),
                            pin_cpus=True, cpu_shares=cpu_shares, out=io.StringIO())
    assert rc == 0
    roles = [cmd[cmd.index("--role") + 1] for cmd in calls]
    assert roles == ["chief"] + ["worker"] * workers
    assert pinned == expected


def test_children_get_the_death_signal(monkeypatch):
    """The chief's and workers' preexec_fn asks the kernel for SIGTERM when the launcher dies
    (prctl(PR_SET_PDEATHSIG, SIGTERM)); a child whose launcher is already gone (its parent pid
    is not the launcher's) terminates itself. Real processes: tests/faults/test_studies.py."""
    calls, killed = [], []

    class Libc:
        def prctl(self, *args):
            calls.append(args)
            return 0

    monkeypatch.setattr(launcher, "_libc", lambda: Libc())
    monkeypatch.setattr(launcher.os, "kill", lambda pid, sig: killed.append(sig))
    setup = launcher._child_setup(None)
    launcher_pid = os.getpid()
    monkeypatch.setattr(launcher.os, "getppid", lambda: launcher_pid)  # as seen by the child
    setup()
    assert calls == [(1, int(signal.SIGTERM), 0, 0, 0)] and killed == []
    monkeypatch.setattr(launcher.os, "getppid", lambda: 1)  # the launcher died before prctl
    setup()
    assert killed == [signal.SIGTERM]


def test_run_local_unpinned_by_default(tmp_path, monkeypatch):
    preexec = []
    _fake_processes(monkeypatch, lambda cmd, preexec_fn: preexec.append(preexec_fn))
    assert launcher.run_local("study.toml", 2, project_dir=str(tmp_path / "p"),
                              out=io.StringIO()) == 0
    assert preexec == [None, None, None]
