"""The ``l2-vs-bn`` experiment: what does L2 do to a batch-normalized network?

An experiment of the source checkout, not part of the installed package:
``keras-normreg experiment l2-vs-bn [--epochs N] [--out docs/study_l2_vs_bn]`` (run from a checkout,
e.g. after ``pip install -e .``) calls :func:`cli`, which runs :func:`run_l2_vs_bn`: the 1-D CNN of the zoo (``cnn1d``: 4 × [Conv1D → BN → ReLU], GAP, Dense)
on MNIST-1D (4000 train / 1000 test), SGD with momentum at a constant learning rate, and

* the BN net with a coupled L2 penalty ``L2(λ)`` (``λ·Σw²`` added to the loss) on *all* kernels,
  the BN'd conv kernels included (``regularizers.apply(..., skip_scale_invariant=False)``), for
  each λ in ``l2_values``;
* two *matched* runs that replace L2 on the BN'd kernels by a fixed norm, matched to the run
  with λ = ``match_l2``: "unit norm" (``constraints.UnitNorm`` on the scale-invariant kernels,
  no L2, learning rate ``η / mean(‖w_j‖²)`` with ``‖w_j‖`` the reference's final RMS unit norms,
  i.e. the reference's final effective learning rate η/‖w_j‖², since a unit-norm unit's effective
  rate is η itself) and "norms pinned" (``constraints.FixedNorm(r)`` at each layer's final norm
  with the same η, and L2(λ) on the non-invariant classifier only: SGD on ``r·ŵ`` at η is SGD on
  the unit-norm ``ŵ`` at ``η/r²``);
* the net without BN (conv with bias), without L2 and with ``L2(match_l2)``.

Every run is monitored by :class:`~keras_normreg.diagnostics.NormMonitor` (every step, per unit);
the per-epoch means, the plots (‖w‖, effective LR, angular update, test accuracy) and a Markdown
report (accuracy table, figures, the command, a discussion) are written next to ``out_dir``:
``<out_dir>/*.png``, ``<out_dir>/epochs.csv``, ``<out_dir>/results.json`` and ``<out_dir>.md``.
The report's prose is ``experiments/templates/l2_vs_bn.md`` (:func:`render_report` fills it from
the results; :func:`load_results` reads a ``results.json`` back).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import string
import sys
import tempfile
import time

import keras
import numpy as np

from keras_normreg import constraints, regularizers, zoo
from keras_normreg import data as nr_data
from keras_normreg._invariance import find_scale_invariant
from keras_normreg._utils import check_number, received
from keras_normreg.diagnostics import plots
from keras_normreg.diagnostics.auditor import AuditRow, InvarianceReport, scale_invariant_weights
from keras_normreg.diagnostics.monitor import NormMonitor, equilibrium_angular_update

from ._report import load_sections

__all__ = ["DEFAULT_L2_VALUES", "cli", "load_results", "load_template", "render_report",
           "run_l2_vs_bn"]

DEFAULT_L2_VALUES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
_MEAN_METRICS = ("norm", "effective_lr", "angular_update", "predicted_angular_update",
                 "unit_norm", "unit_effective_lr", "unit_angular_update", "rms_effective_lr")
_FIGURES = ("norm", "effective_lr", "angular_update", "accuracy")


def _label(run):
    if run["kind"] == "bn_l2":
        return f"BN, L2 {run['l2']:g}" if run["l2"] else "BN, no L2"
    if run["kind"] == "bn_unit":
        return f"BN, unit norm, lr {run['lr']:.3g}"
    if run["kind"] == "bn_pinned":
        return f"BN, norms pinned, L2 {run['l2']:g} on head only"
    return f"no BN, L2 {run['l2']:g}" if run["l2"] else "no BN, no L2"


def _train_one(run, *, epochs, batch_size, momentum, seed, work_dir, verbose):
    keras.utils.set_random_seed(seed)
    norm = "none" if run["kind"] == "no_bn" else "batch"
    model = zoo.create("cnn1d", norm=norm)
    if run["kind"] in ("bn_unit", "bn_pinned"):
        paths = sorted(find_scale_invariant(model))
        for path in paths:
            pin = (constraints.UnitNorm() if run["kind"] == "bn_unit"
                   else constraints.FixedNorm(run["pins"][path]))
            constraints.attach(model, pin, include=[path])
    if run["l2"]:
        # bn_pinned: L2 on the kernels that are not scale-invariant (the classifier) only
        regularizers.apply(model, regularizers.L2(run["l2"]), targets=("kernel",),
                           skip_scale_invariant="auto" if run["kind"] == "bn_pinned" else False)
    model.compile(optimizer=keras.optimizers.SGD(run["lr"], momentum=momentum),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = nr_data.load("mnist1d", "train", batch_size, seed=seed)
    test = nr_data.load("mnist1d", "test", 1000)
    csv_path = os.path.join(work_dir, f"{run['name']}.csv")
    monitor = NormMonitor(every_n_steps=1, layers="all", per_unit=True, csv_path=csv_path,
                          warn=False)
    t0 = time.perf_counter()
    hist = model.fit(train, epochs=epochs, validation_data=test, callbacks=[monitor],
                     verbose=0)
    seconds = time.perf_counter() - t0
    return model, monitor, hist.history, seconds


def _epoch_means(monitor):
    """``{path: {metric: array[epochs]}}`` — the mean of each metric over each epoch's steps."""
    out = {}
    for path, h in monitor.history.items():
        h = dict(h, rms_effective_lr=h["lr"] / np.square(h["unit_norm"]))
        epochs = h["epoch"]
        ids = np.unique(epochs)
        out[path] = {m: np.array([np.mean(h[m][epochs == e]) for e in ids])
                     for m in _MEAN_METRICS if m in h}
        out[path]["epoch"] = ids + 1
    return out


def _conv_paths(per_epoch):
    return [p for p in per_epoch if "conv" in p.split("/")[0]]


def _mean_over(per_epoch, paths, metric):
    return np.mean([per_epoch[p][metric] for p in paths], axis=0)


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def run_l2_vs_bn(epochs=30, out_dir="docs/study_l2_vs_bn", *, l2_values=DEFAULT_L2_VALUES,
                 learning_rate=0.1, momentum=0.9, batch_size=128, seed=0, match_l2=1e-3,
                 no_bn=True, verbose=0, command=None):
    """Run the study and write its report; return the results dict (also in results.json).

    Args:
        epochs: epochs per run.
        out_dir: folder for the figures, ``epochs.csv`` and ``results.json``; the report is
            ``<out_dir>.md`` (links are relative to it).
        l2_values: the λ of ``L2(λ)`` (penalty ``λ·Σw²``) for the BN runs.
        learning_rate / momentum: SGD's, constant; the same for every run except the unit-norm
            one (matched, see the module docstring).
        batch_size: training batch size.
        seed: seed of the initialization (the same for every run of a kind) and of the data
            order.
        match_l2: the λ of ``l2_values`` whose final effective learning rate the unit-norm run
            matches; also the λ of the second no-BN run. None skips the unit-norm run.
        no_bn: also run the net without BN.
        verbose: print one line per run.
        command: the command line to print in the report (default: the CLI form).
    """
    check_number("epochs", epochs, low=1, integer=True)
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir).strip():
        raise ValueError(f"Argument `out_dir` must be a path. {received('out_dir', out_dir)}")
    try:
        l2_values = tuple(float(check_number("l2_values", v, low=0)) for v in l2_values)
    except TypeError:
        raise ValueError("Argument `l2_values` must be a sequence of numbers >= 0. "
                         f"{received('l2_values', l2_values)}") from None
    if not l2_values:
        raise ValueError(f"Argument `l2_values` must not be empty. "
                         f"{received('l2_values', l2_values)}")
    check_number("learning_rate", learning_rate, low=0, low_inclusive=False)
    check_number("momentum", momentum, low=0, high=1, high_inclusive=False)
    check_number("batch_size", batch_size, low=1, integer=True)
    if match_l2 is not None and float(match_l2) not in l2_values:
        raise ValueError(f"Argument `match_l2` must be one of l2_values={list(l2_values)} or "
                         f"None. {received('match_l2', match_l2)}")
    out_dir = os.fspath(out_dir).rstrip("/\\")
    os.makedirs(out_dir, exist_ok=True)
    report_path = out_dir + ".md"
    if command is None:
        command = f"keras-normreg experiment l2-vs-bn --epochs {epochs} --out {out_dir}"

    runs = [{"name": f"bn_l2_{lam:g}", "kind": "bn_l2", "l2": lam, "lr": learning_rate}
            for lam in l2_values]
    results = {"command": command, "epochs": epochs, "learning_rate": learning_rate,
               "momentum": momentum, "batch_size": batch_size, "seed": seed,
               "match_l2": match_l2, "runs": []}
    results["steps_per_epoch"] = math.ceil(nr_data.info("mnist1d").splits["train"] / batch_size)
    kw = {"epochs": epochs, "batch_size": batch_size, "momentum": momentum, "seed": seed,
          "verbose": verbose}
    per_epoch_all = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="l2_vs_bn_") as work:
        def execute(run):
            model, monitor, hist, seconds = _train_one(run, work_dir=work, **kw)
            per_epoch = _epoch_means(monitor)
            per_epoch_all[run["name"]] = (run, per_epoch, hist)
            convs = _conv_paths(per_epoch)
            last = {m: float(_mean_over(per_epoch, convs, m)[-1]) for m in _MEAN_METRICS}
            pred = float("nan")
            if run["kind"] == "bn_l2" and run["l2"]:
                pred = equilibrium_angular_update("sgd", learning_rate=run["lr"], l2=run["l2"],
                                                  momentum=momentum)
            entry = {**run, "label": _label(run), "seconds": round(seconds, 1),
                     "test_accuracy": float(hist["val_accuracy"][-1]),
                     "best_test_accuracy": float(max(hist["val_accuracy"])),
                     "last5_test_accuracy": float(np.mean(hist["val_accuracy"][-5:])),
                     "train_accuracy": float(hist["accuracy"][-1]),
                     "train_loss": float(hist["loss"][-1]),
                     "test_loss": float(hist["val_loss"][-1]),
                     "last_epoch_conv_mean": last, "predicted_angular_update": pred,
                     "initial_unit_norm": float(np.mean([
                         monitor.history[p]["unit_norm"][0] for p in convs]))}
            results["runs"].append(entry)
            if run["kind"] == "bn_l2":
                results.setdefault("effective_lr_by_epoch", {})[run["l2"]] = [
                    float(v) for v in _mean_over(per_epoch, convs, "rms_effective_lr")]
            if verbose:
                print(f"{entry['label']}: test accuracy {entry['test_accuracy']:.4f} "
                      f"({seconds:.0f} s)", flush=True)

        for run in runs:
            execute(run)
        if match_l2 is not None:
            ref = next(r for r in results["runs"]
                       if r["kind"] == "bn_l2" and r["l2"] == float(match_l2))
            ref_epochs = per_epoch_all[ref["name"]][1]
            pins = {p: float(ref_epochs[p]["unit_norm"][-1]) for p in _conv_paths(ref_epochs)}
            mean_sq = float(np.mean([r * r for r in pins.values()]))
            matched_lr = learning_rate / mean_sq
            results["matched"] = {"l2": float(match_l2), "unit_norms": pins,
                                  "learning_rate": matched_lr}
            execute({"name": "bn_unit_norm", "kind": "bn_unit", "l2": 0.0, "lr": matched_lr,
                     "matched_to": float(match_l2)})
            execute({"name": "bn_pinned", "kind": "bn_pinned", "l2": float(match_l2),
                     "lr": learning_rate, "pins": pins, "pin": math.sqrt(mean_sq),
                     "matched_to": float(match_l2)})
        if no_bn:
            execute({"name": "no_bn_l2_0", "kind": "no_bn", "l2": 0.0, "lr": learning_rate})
            if match_l2:
                execute({"name": f"no_bn_l2_{float(match_l2):g}", "kind": "no_bn",
                         "l2": float(match_l2), "lr": learning_rate})
        x_probe = next(iter(nr_data.load("mnist1d", "train", 256, shuffle=False)))[0]
        keras.utils.set_random_seed(seed)
        audit = scale_invariant_weights(zoo.create("cnn1d"), x_probe)
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["audit"] = [row._asdict() for row in audit]
    results["versions"] = {"python": platform.python_version(), "keras": keras.__version__,
                           "tensorflow": _tf_version(), "machine": platform.machine()}

    _write_epochs_csv(os.path.join(out_dir, "epochs.csv"), per_epoch_all)
    _plot(out_dir, per_epoch_all, results)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    with open(report_path, "w") as f:
        f.write(render_report(results, audit, out_dir))
    results["report"] = report_path
    return results


def cli(*, epochs=30, out="docs/study_l2_vs_bn", which="l2-vs-bn") -> int:
    """``keras-normreg experiment l2-vs-bn [--epochs N] [--out DIR]``: the CLI's handler calls this
    with the parsed values; returns the exit code (2: bad ``epochs``)."""
    if epochs < 1:
        print(f"keras-normreg experiment: error: --epochs must be >= 1. Received: epochs={epochs}",
              file=sys.stderr)
        return 2
    command = f"keras-normreg experiment {which} --epochs {epochs} --out {out}"
    print(f"keras-normreg experiment {which}: cnn1d on MNIST-1D, {epochs} epochs per run, "
          f"BN + L2 λ in {list(DEFAULT_L2_VALUES)}, unit norm, no BN -> {out}.md",
          flush=True)
    results = run_l2_vs_bn(epochs=epochs, out_dir=out, verbose=1, command=command)
    print(f"report: {results['report']} ({results['total_seconds']:.0f} s)")
    return 0


def _tf_version():
    with contextlib.suppress(Exception):
        import tensorflow as tf

        return tf.__version__
    return "?"


def _write_epochs_csv(path, per_epoch_all):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "epoch", "variable", *_MEAN_METRICS, "train_loss", "train_accuracy",
                    "test_loss", "test_accuracy"])
        for name, (_, per_epoch, hist) in per_epoch_all.items():
            for path_, cols in per_epoch.items():
                for i, e in enumerate(cols["epoch"]):
                    w.writerow([name, int(e), path_, *(f"{cols[m][i]:.6g}" for m in _MEAN_METRICS),
                                f"{hist['loss'][i]:.6g}", f"{hist['accuracy'][i]:.6g}",
                                f"{hist['val_loss'][i]:.6g}", f"{hist['val_accuracy'][i]:.6g}"])


def _plot(out_dir, per_epoch_all, results):
    styles, colors = {}, {}
    for i, (run, _, _) in enumerate(per_epoch_all.values()):
        label = _label(run)
        colors[run["name"]] = f"C{i % 10}"
        styles[label] = {"color": colors[run["name"]]}
        if run["kind"] == "bn_unit":
            styles[label] = {"linestyle": "--", "color": "k"}
        elif run["kind"] == "bn_pinned":
            styles[label] = {"linestyle": "-.", "color": "0.45"}
        elif run["kind"] == "no_bn":
            styles[label]["linestyle"] = ":"
    any_run = next(iter(per_epoch_all.values()))
    convs = _conv_paths(any_run[1])

    def panels(metric):
        out = []
        for path in convs:
            lines = {}
            for _, (run, per_epoch, _) in per_epoch_all.items():
                lines[_label(run)] = (per_epoch[path]["epoch"], per_epoch[path][metric])
            out.append((path, lines))
        return out

    plots.line_grid(os.path.join(out_dir, "norm.png"), panels("unit_norm"),
                    ylabel="RMS unit norm ‖w_j‖", logy=True, styles=styles,
                    title="Weight norm per output unit (epoch mean)")
    plots.line_grid(os.path.join(out_dir, "effective_lr.png"), panels("rms_effective_lr"),
                    ylabel="η/‖w_j‖² (RMS unit norm)", logy=True, styles=styles,
                    title="Effective learning rate per output unit (epoch mean)")
    # angular update per conv layer, with the equilibrium predictions dashed
    ang_styles = dict(styles)
    ang_panels = panels("angular_update")
    for entry in results["runs"]:
        if not math.isnan(entry["predicted_angular_update"]):
            lab = f"predicted, L2 {entry['l2']:g}"
            ang_styles[lab] = {"linestyle": "--", "linewidth": 0.9,
                               "color": colors[entry["name"]]}
            for _, lines in ang_panels:
                e = next(iter(lines.values()))[0]
                lines[lab] = (e, np.full(len(e), entry["predicted_angular_update"]))
    plots.line_grid(os.path.join(out_dir, "angular_update.png"), ang_panels,
                    ylabel="angle per step (rad)", logy=True, styles=ang_styles,
                    title="Angular update per step (epoch mean) vs the equilibrium prediction")
    acc = {}
    for _, (run, _, hist) in per_epoch_all.items():
        acc[_label(run)] = (np.arange(1, len(hist["val_accuracy"]) + 1), hist["val_accuracy"])
    plots.line_grid(os.path.join(out_dir, "accuracy.png"), [("MNIST-1D test accuracy", acc)],
                    ylabel="test accuracy", ncols=1, styles=styles)


def _relaxation_steps(lr, l2, momentum):
    """Steps for ‖w‖⁴ to relax by e under coupled L2(l2) with SGDM: (1−α) / (8·η·l2)."""
    return (1 - momentum) / (8 * lr * l2)


# ------------------------------------------------------------------------------ the report
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "l2_vs_bn.md")


_SECTIONS = ("report", "row", "matched", "matched_unit", "matched_pinned", "item1", "item1_norm",
             "item1_monotonic", "item2", "item3", "item3_part", "item3_rise_note", "item4",
             "item4_reference", "item4_unit", "item4_pinned", "item4_less_rotation",
             "item4_similar_rotation", "item4_unit_rotates", "item4_annealing", "item5",
             "item5_run", "overall", "overall_decreasing")


def load_template(path=TEMPLATE) -> dict[str, string.Template]:
    """``{name: string.Template}``, one per ``<!-- @section name -->`` block of ``path``
    (leading and trailing blank lines dropped); every section :func:`render_report` uses must
    be there."""
    return load_sections(path, _SECTIONS, "l2-vs-bn")


def load_results(path):
    """``(results, audit)`` from a ``results.json`` written by :func:`run_l2_vs_bn` (JSON's
    string keys of ``effective_lr_by_epoch`` back to the λ floats)."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    results["effective_lr_by_epoch"] = {
        float(k): v for k, v in results.get("effective_lr_by_epoch", {}).items()}
    audit = InvarianceReport(AuditRow(**row) for row in results["audit"])
    return results, audit


def render_report(results, audit, out_dir, template=None) -> str:
    """The Markdown report of ``results`` (what :func:`run_l2_vs_bn` writes to ``<out_dir>.md``;
    figures and data are linked under ``basename(out_dir)/``)."""
    t = template or load_template()
    runs = results["runs"]
    bn = [r for r in runs if r["kind"] == "bn_l2"]
    unit = next((r for r in runs if r["kind"] == "bn_unit"), None)
    pinned = next((r for r in runs if r["kind"] == "bn_pinned"), None)
    lr = results["learning_rate"]
    base = os.path.basename(os.fspath(out_dir).rstrip("/\\"))
    matched = ""
    if unit is not None:
        m = results["matched"]
        matched = t["matched"].substitute(
            l2=f"{m['l2']:g}", pins=", ".join(f"{v:.3g}" for v in m["unit_norms"].values()))
        matched += "\n\n" + t["matched_unit"].substitute(unit_lr=f"{unit['lr']:.4g}", lr=f"{lr:g}")
        if pinned is not None:
            matched += "\n" + t["matched_pinned"].substitute(lr=f"{lr:g}",
                                                             l2=f"{pinned['l2']:g}")
        matched += "\n\n"
    rows = []
    for r in runs:
        last = r["last_epoch_conv_mean"]
        rows.append(t["row"].substitute(
            label=r["label"], lr=f"{r['lr']:.4g}", norm=_fmt(last["unit_norm"]),
            effective_lr=_fmt(last["rms_effective_lr"]),
            angular_update=_fmt(last["angular_update"]),
            predicted=_fmt(r["predicted_angular_update"]), train_loss=f"{r['train_loss']:.4f}",
            test_accuracy=f"{r['test_accuracy']:.4f}",
            last5_test_accuracy=f"{r['last5_test_accuracy']:.4f}"))
    items = _discussion(t, results, bn, unit, pinned, [r for r in runs if r["kind"] == "no_bn"])
    versions = results["versions"]
    return t["report"].substitute(
        minutes=f"{results['total_seconds'] / 60:.1f}", command=results["command"],
        momentum=f"{results['momentum']:g}", lr=f"{lr:g}", batch_size=results["batch_size"],
        epochs=results["epochs"], steps=results["steps_per_epoch"] * results["epochs"],
        seed=results["seed"], keras=versions["keras"], tensorflow=versions["tensorflow"],
        matched=matched, rows="\n".join(rows), discussion="\n".join(items[:-1]) + "\n\n"
        + items[-1], audit_table=audit.to_markdown(), data_dir=base,
        **{f"fig_{key}": f"{base}/{key}.png" for key in _FIGURES}) + "\n"


def _discussion(t, results, bn, unit, pinned, nobn):
    """The numbered discussion items, then the closing paragraph (the last element)."""
    out = []
    lr = results["learning_rate"]
    by = {r["l2"]: r for r in bn}
    lams = sorted(by)
    last = {lam: by[lam]["last_epoch_conv_mean"] for lam in lams}
    init = bn[0]["initial_unit_norm"]
    norms = [last[lam]["unit_norm"] for lam in lams]
    effs = [last[lam]["rms_effective_lr"] for lam in lams]
    out.append(t["item1"].substitute(
        init=f"{init:.3g}", epochs=results["epochs"],
        norms=", ".join(t["item1_norm"].substitute(norm=f"{n:.3g}", l2=f"{lam:g}")
                        for lam, n in zip(lams, norms, strict=True)),
        monotonic=" " + t["item1_monotonic"].substitute() if _decreasing(norms) else "",
        effective_lrs=", ".join(f"{e:.3g}" for e in effs),
        spread=f"{max(effs) / min(effs):.1f}", lr=f"{lr:g}"))
    if 0.0 in by:
        r0 = last[0.0]
        out.append(t["item2"].substitute(
            init=f"{init:.3g}", norm=f"{r0['unit_norm']:.3g}",
            initial_effective_lr=f"{lr / init ** 2:.3g}",
            effective_lr=f"{r0['rms_effective_lr']:.3g}"))
    parts = []
    for lam in lams:
        if lam <= 0:
            continue
        m, p = last[lam]["angular_update"], by[lam]["predicted_angular_update"]
        parts.append(t["item3_part"].substitute(
            l2=f"{lam:g}", measured=f"{m:.3g}", predicted=f"{p:.3g}",
            deviation=f"{100 * (m / p - 1):+.0f}",
            relaxation_steps=f"{_relaxation_steps(lr, lam, results['momentum']):.0f}"))
    if parts:
        out.append(t["item3"].substitute(
            parts="; ".join(parts), steps=results["steps_per_epoch"] * results["epochs"],
            rise_note=_rise_note(t, results)))
    if pinned is not None or unit is not None:
        out.append(_matched_item(t, results, by[results["match_l2"]], unit, pinned))
    if nobn:
        out.append(t["item5"].substitute(runs="; ".join(
            t["item5_run"].substitute(label=r["label"], train_loss=f"{r['train_loss']:.3f}",
                                      test_accuracy=f"{r['test_accuracy']:.4f}")
            for r in nobn)))
    best = max(bn, key=lambda r: r["last5_test_accuracy"])
    worst = min(bn, key=lambda r: r["last5_test_accuracy"])
    decreasing = _decreasing([by[lam]["last5_test_accuracy"] for lam in lams])
    out.append(t["overall"].substitute(
        worst_accuracy=f"{worst['last5_test_accuracy']:.4f}", worst_l2=f"{worst['l2']:g}",
        best_accuracy=f"{best['last5_test_accuracy']:.4f}", best_l2=f"{best['l2']:g}",
        decreasing="; " + t["overall_decreasing"].substitute() if decreasing else ""))
    return out


def _matched_item(t, results, ref, unit, pinned):
    """The report's item 4: the λ run against its matched unit-norm / pinned runs."""
    rl = ref["last_epoch_conv_mean"]

    def facts(run):
        return {"test_accuracy": f"{run['test_accuracy']:.4f}",
                "last5_test_accuracy": f"{run['last5_test_accuracy']:.4f}",
                "train_loss": f"{run['train_loss']:.3f}",
                "angular_update": f"{run['last_epoch_conv_mean']['angular_update']:.3g}"}

    lines = [t["item4_reference"].substitute(l2=f"{ref['l2']:g}", **facts(ref))]
    if unit is not None:
        lines.append(t["item4_unit"].substitute(lr=f"{unit['lr']:.3g}", **facts(unit)))
    ratio = float("nan")
    if pinned is not None:
        ratio = rl["angular_update"] / pinned["last_epoch_conv_mean"]["angular_update"]
        rotation = (t["item4_less_rotation"].substitute(ratio=f"{ratio:.1f}") if ratio > 1.5
                    else t["item4_similar_rotation"].substitute())
        lines.append(t["item4_pinned"].substitute(lr=f"{results['learning_rate']:g}",
                                                  rotation=rotation, **facts(pinned)))
    if unit is not None and pinned is not None:
        u_rot = unit["last_epoch_conv_mean"]["angular_update"]
        if u_rot > 1.5 * pinned["last_epoch_conv_mean"]["angular_update"]:
            lines.append(t["item4_unit_rotates"].substitute(
                angular_update=f"{u_rot:.3g}",
                reference_angular_update=f"{rl['angular_update']:.3g}",
                last5_test_accuracy=f"{unit['last5_test_accuracy']:.4f}",
                reference_last5_test_accuracy=f"{ref['last5_test_accuracy']:.4f}",
                lr=f"{unit['lr']:.3g}"))
    annealing = t["item4_annealing"].substitute() + " " if ratio > 1.5 else ""
    return t["item4"].substitute(l2=f"{ref['l2']:g}", lines="\n".join(lines),
                                 annealing=annealing)


def _decreasing(values):
    return all(a >= b for a, b in zip(values, values[1:], strict=False))


def _rise_note(t, results):
    """Where the reference run's effective learning rate reaches 90% of its final value."""
    lam = results.get("match_l2")
    curve = results.get("effective_lr_by_epoch", {}).get(lam)
    if curve is None or len(curve) < 3:
        return ""
    final = curve[-1]
    epoch = next(i + 1 for i, v in enumerate(curve) if v >= 0.9 * final)
    return " " + t["item3_rise_note"].substitute(l2=f"{lam:g}", epoch=epoch, epochs=len(curve))
