"""Run a study: keras-tuner over :class:`NormRegHyperModel`, progress, resume, reports, export.

``run_study(spec)`` builds the oracle of ``spec.tuner.kind`` and a tuner whose trials are
recipes (:func:`keras_normreg.tuning.space.trial_recipe`), searches, then writes the leaderboard
(Markdown + CSV) and the λ × normalization heatmap into ``<output.directory>/<name>/`` and
exports the best trial's model to ``<output.export_dir>/<export_name>/`` (``model.keras``,
``card.json`` with the test accuracy measured once, ``recipe.toml``).

Resume: the study lives in ``<directory>/<name>/`` (keras-tuner's project); running it again
with ``overwrite=False`` reloads the oracle, re-runs trials that were interrupted and continues
to the budget. A line per finished trial shows ``trial k/N done, best <objective> x, ETA ..``.

Distributed (keras-tuner's chief/worker protocol over gRPC): :func:`run_chief` serves the
oracle on ``address`` until every worker has been told to stop, then writes the reports;
:func:`run_worker` asks the chief for trials and runs them (``run_study(role=...)`` calls the
one of ``role``). Workers must share the study directory with the chief for the export (same
machine, or a shared file system). Every call carries the study's secret
(:func:`launcher.oracle_security`), which the chief's server checks before keras-tuner's
servicer sees the call; the workers' keras-tuner client is given a channel that adds it, over
TLS when the chief has a certificate (:mod:`~keras_normreg.tuning.serving`).

Faults: the oracle (:mod:`~keras_normreg.tuning.oracle`) saves its state atomically and after
each trial has left ``ongoing_trials``, so a finished study reruns nothing; a worker sends a
heartbeat while it trains, and one silent for ``distributed.worker_timeout`` seconds loses its
trial to another worker (its late reports, tagged with its id, are ignored); checkpoints are
written through a temporary file; the export waits until no trial runs. The chief and a
one-process run hold the study lock (:func:`launcher.study_lock`) and end cleanly on SIGTERM.

This module is the orchestration; the parts are the study's oracle (``oracle``), its tuner
(``tuner``), the gRPC server and channel (``serving``), the progress lines (``progress``) and
the export (``export``). Their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Mapping

from keras_normreg import _atomic, _compat, saving
from keras_normreg.tuning import launcher, report
from keras_normreg.tuning import spec as nr_spec
from keras_normreg.tuning.export import export_best, export_study
from keras_normreg.tuning.oracle import IDLE_WAIT as IDLE_WAIT
from keras_normreg.tuning.oracle import TAG as TAG
from keras_normreg.tuning.oracle import BayesianStudyOracle as BayesianStudyOracle
from keras_normreg.tuning.oracle import GridStudyOracle as GridStudyOracle
from keras_normreg.tuning.oracle import HyperbandStudyOracle as HyperbandStudyOracle
from keras_normreg.tuning.oracle import RandomStudyOracle as RandomStudyOracle
from keras_normreg.tuning.oracle import budget, study_finished
from keras_normreg.tuning.oracle import make_oracle as make_oracle
from keras_normreg.tuning.progress import (
    ProgressDisplay,
    format_duration,
    progress_line,
    trials_done,
)
from keras_normreg.tuning.serving import (
    oracle_channel,
    refused_as,
    serve_oracle,
    start_oracle_server,
)
from keras_normreg.tuning.tuner import RECIPE_FILE as RECIPE_FILE
from keras_normreg.tuning.tuner import RESULT_FILE as RESULT_FILE
from keras_normreg.tuning.tuner import HyperbandStudyTuner as HyperbandStudyTuner
from keras_normreg.tuning.tuner import StudyTuner as StudyTuner
from keras_normreg.tuning.tuner import kt_dist as kt_dist
from keras_normreg.tuning.tuner import make_tuner

__all__ = ["ProgressDisplay", "budget", "export_best", "format_duration", "make_tuner",
           "oracle_channel", "progress_line", "run_chief", "run_study", "run_worker",
           "serve_oracle", "start_oracle_server", "study_finished", "trials_done"]


def check_writable(folder: str, argument: str) -> None:
    """Raise :class:`keras_normreg.saving.DestinationError` (a ValueError naming
    ``argument``) now if ``folder`` cannot be created or written, before any trial runs."""
    where = (f"{argument} in the study file, or --directory" if argument != "output.export_dir"
             else f"{argument} in the study file")
    saving.check_destination(folder, argument=argument, what="the study", where=where)


def _clear_project(project: str) -> None:
    """``--overwrite``: delete everything in the study folder except its lock (held by us)."""
    for name in os.listdir(project):
        if name == launcher.LOCK_FILE:
            continue
        path = os.path.join(project, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


@contextlib.contextmanager
def _exit_on_sigterm():
    """SIGTERM ends the chief (or a one-process run) as SystemExit(143) would: the server
    stops, the oracle state is saved once more and the study lock is released on the way out
    (the launcher sends SIGTERM to stop a study). Only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_text(path: str, text: str) -> None:
    _atomic.write_text(path, text)


# ------------------------------------------------------------------------- the steps
def _load(study, max_trials: int | None, worker_timeout: float | None) -> dict:
    """The resolved spec of ``study`` (a path or a spec) with the overrides applied."""
    if isinstance(study, (str, os.PathLike)):
        spec = nr_spec.load_study(study, max_trials=max_trials)
    else:
        spec = nr_spec.with_max_trials(study, max_trials)
    return nr_spec.with_worker_timeout(spec, worker_timeout)


def _distributed_security(**given) -> launcher.OracleSecurity:
    """A chief's or a worker's protection of the oracle (:func:`launcher.oracle_security`),
    after checking that keras-tuner's distributed mode can run at all."""
    launcher.check_distributed_dependencies()
    return launcher.oracle_security(**given)


def _refuse_security_options(given: Mapping) -> None:
    """A one-process run has no oracle to protect: any secret or TLS option is a mistake."""
    given = {k: (v or None) if k == "insecure" else v for k, v in given.items()}
    if any(v is not None for v in given.values()):
        name = next(k for k, v in given.items() if v is not None)
        shown = "<hidden>" if name == "secret" else repr(given[name])
        raise ValueError(f"The oracle's secret and TLS options are for a study spread over "
                         f"processes (--role chief|worker, or --workers). "
                         f"Received: {name}={shown}")


def _announce(spec: Mapping, tuner, project: str, total: int | None, out) -> bool:
    """Say where the study stands and write its resolved spec beside it; returns whether it
    has already finished (nothing to run)."""
    done = trials_done(tuner.oracle)
    finished = study_finished(tuner.oracle, total)
    where = (": finished, nothing to run" if finished else
             f" (resuming {project})" if done else f" -> {project}")
    print(f"study {spec['name']}: {done}/{total} trials done, tuner "
          f"{spec['tuner']['kind']}, objective {spec['objective']['name']}{where}",
          file=out, flush=True)
    _write_text(os.path.join(tuner.project_dir, "study.toml"), nr_spec.study_to_toml(spec))
    return finished


def _conclude(spec: Mapping, tuner, *, project: str, total: int | None, finished: bool,
              do_export: bool, command: str, out, label: str) -> dict:
    """The reports (leaderboard, heatmap), the export, and the result of the run."""
    done = trials_done(tuner.oracle)
    reports = report.write_reports(tuner.project_dir, spec, command=command, budget=total)
    print(f"study {spec['name']}: {done}/{total} trials done", file=out)
    print(report.format_console(reports["rows"], spec, top=spec["output"]["top"]), file=out)
    print(f"leaderboard: {reports['markdown']} (+ {os.path.basename(reports['csv'])})",
          file=out)
    print(f"heatmap: {reports['heatmap']}", file=out, flush=True)
    exported = (export_study(tuner, spec, finished=finished, command=command, out=out)
                if do_export else None)
    best_rows = [r for r in reports["rows"] if r["status"] == "COMPLETED"]
    return {"project_dir": project, "role": label, "done": done,
            "budget": total, "reports": reports, "export": exported,
            "best": best_rows[0] if best_rows else None}


def _run_oracle_side(spec: Mapping, *, environment, label: str, security, directory,
                     overwrite: bool, export: bool | None, command: str | None, out) -> dict:
    """A one-process run or a chief: the process that holds the oracle. Checks the folders,
    takes the study lock, searches (a chief serves the oracle instead), then reports and
    exports. ``environment``: keras-tuner's role variables (:func:`launcher.tuner_environment`)."""
    command = command or f"keras-normreg tune {spec.get('_path', spec['name'])}"
    project = nr_spec.project_dir(spec, directory)
    do_export = spec["output"]["export"] if export is None else export
    check_writable(directory or spec["output"]["directory"],
                   "--directory" if directory else "output.directory")
    if do_export:
        check_writable(spec["output"]["export_dir"], "output.export_dir")
    with launcher.study_lock(project), _exit_on_sigterm(), environment:
        if overwrite and os.path.isdir(project):
            _clear_project(project)
        tuner = make_tuner(spec, directory=directory, overwrite=False, out=out,
                           security=security)
        total = _compat.oracle_display(tuner.oracle).total
        finished = _announce(spec, tuner, project, total, out)
        if not finished:
            tuner.search()
        return _conclude(spec, tuner, project=project, total=total, finished=finished,
                         do_export=do_export, command=command, out=out, label=label)


# ------------------------------------------------------------------------ the entries
def run_chief(study, oracle: str, *, directory: str | None = None, overwrite: bool = False,
              max_trials: int | None = None, export: bool | None = None,
              command: str | None = None, out=None, worker_timeout: float | None = None,
              secret: str | None = None, secret_file=None, tls_cert=None, tls_key=None,
              tls_ca=None, insecure: bool = False) -> dict:
    """Run (or resume) ``study`` as the chief serving its oracle on ``oracle`` (``HOST:PORT``)
    until the workers are done, then write the reports and export; arguments and result as
    :func:`run_study`'s (``"role": "chief"``). A chief on an address that is not loopback
    without a secret is refused before anything runs (:func:`launcher.check_chief`)."""
    out = out or sys.stdout
    spec = _load(study, max_trials, worker_timeout)
    security = _distributed_security(secret=secret, secret_file=secret_file, tls_cert=tls_cert,
                                     tls_key=tls_key, tls_ca=tls_ca, insecure=insecure)
    if oracle is not None:
        launcher.check_chief(*launcher.parse_address(oracle), security)
    return _run_oracle_side(spec, environment=launcher.tuner_environment("chief", oracle),
                            label="chief", security=security, directory=directory,
                            overwrite=overwrite, export=export, command=command, out=out)


def run_worker(study, oracle: str, *, worker_id: str | None = None,
               directory: str | None = None, overwrite: bool = False,
               max_trials: int | None = None, out=None, worker_timeout: float | None = None,
               secret: str | None = None, secret_file=None, tls_cert=None, tls_key=None,
               tls_ca=None, insecure: bool = False) -> dict:
    """Run trials of ``study`` for the chief at ``oracle`` (``HOST:PORT``) until it says stop.

    ``worker_id``: a stable id (a restarted worker must reuse it to resume its trial; default
    ``worker-<hostname>``). A worker takes no lock, never overwrites the study (``overwrite``
    is refused), writes no report and exports nothing. Other arguments as :func:`run_study`'s.

    Raises:
        launcher.OracleAuthError: the chief refused this worker's secret.

    Returns:
        ``{"project_dir", "role": "worker"}`` and ``None`` for the other keys of
        :func:`run_study`'s result.
    """
    out = out or sys.stdout
    spec = _load(study, max_trials, worker_timeout)
    security = _distributed_security(secret=secret, secret_file=secret_file, tls_cert=tls_cert,
                                     tls_key=tls_key, tls_ca=tls_ca, insecure=insecure)
    if overwrite:
        raise ValueError("A worker never overwrites the study (the chief or the launcher does). "
                         "Received: overwrite=True")
    project = nr_spec.project_dir(spec, directory)
    with launcher.tuner_environment("worker", oracle, worker_id):
        tuner = make_tuner(spec, directory=directory, overwrite=False, out=out,
                           security=security)
        with refused_as(oracle):
            tuner.search()
    return {"project_dir": project, "role": "worker", "done": None, "budget": None,
            "reports": None, "export": None, "best": None}


def run_study(study, *, directory: str | None = None, overwrite: bool = False,
              max_trials: int | None = None, export: bool | None = None,
              role: str | None = None, oracle: str | None = None,
              worker_id: str | None = None, command: str | None = None, out=None,
              worker_timeout: float | None = None, secret: str | None = None,
              secret_file=None, tls_cert=None, tls_key=None, tls_ca=None,
              insecure: bool = False) -> dict:
    """Run (or resume) a study; see the module docstring. ``role="chief"`` is
    :func:`run_chief`, ``role="worker"`` :func:`run_worker`; None runs it in this process.

    The chief and a one-process run hold ``<project>/.study.lock`` while they run
    (:func:`launcher.study_lock`): a second one on the same study gets
    :class:`~keras_normreg._locks.LockError` naming the first. The study folder (and the
    export folder) are checked writable before anything runs. A finished study runs nothing
    again: it says so, rewrites the reports and exports the best trial only if it has not
    been exported yet.

    Args:
        study: a path to a study TOML or a resolved spec (:func:`spec.load_study`).
        directory: overrides ``output.directory``.
        overwrite: start over (delete ``<directory>/<name>/``); never done by a worker.
        max_trials: overrides ``budget.max_trials``.
        export: overrides ``output.export``.
        role: None (one process), ``"chief"`` or ``"worker"``.
        oracle: ``HOST:PORT`` of the chief (with ``role``).
        worker_id: a worker's stable id (a restarted worker must reuse it to resume its trial).
        command: the command line recorded in the leaderboard and the model card.
        out: where progress goes (default stdout).
        worker_timeout: overrides ``distributed.worker_timeout`` (seconds a worker may stay
            silent before the chief hands its trial to another worker).
        secret, secret_file: the secret every oracle call carries (with ``role``; default:
            ``KERAS_NORMREG_ORACLE_SECRET`` or ``KERAS_NORMREG_ORACLE_SECRET_FILE``; a file
            must be private to its owner). See :func:`launcher.oracle_security`.
        tls_cert, tls_key: the chief's TLS certificate and key (PEM paths); tls_ca: the
            certificate a worker trusts (default ``tls_cert``).
        insecure: let a chief on an address that is not loopback run without a secret
            (refused otherwise, before anything runs).

    Raises:
        launcher.OracleAuthError: (a worker) the chief refused its secret.

    Returns:
        ``{"project_dir", "done", "budget", "role", "reports", "export", "best"}``.
    """
    protection = {"secret": secret, "secret_file": secret_file, "tls_cert": tls_cert,
                  "tls_key": tls_key, "tls_ca": tls_ca, "insecure": insecure}
    common = {"directory": directory, "overwrite": overwrite, "max_trials": max_trials,
              "out": out, "worker_timeout": worker_timeout, **protection}
    if role == "chief":
        return run_chief(study, oracle, export=export, command=command, **common)
    if role == "worker":
        return run_worker(study, oracle, worker_id=worker_id, **common)
    if role is not None:
        raise ValueError(f"Argument `role` must be one of {list(launcher.ROLES)}. "
                         f"Received: role={role!r}")
    out = out or sys.stdout
    spec = _load(study, max_trials, worker_timeout)
    _refuse_security_options(protection)
    return _run_oracle_side(spec, environment=launcher.tuner_environment(None, oracle, worker_id),
                            label="single", security=None, directory=directory,
                            overwrite=overwrite, export=export, command=command, out=out)
