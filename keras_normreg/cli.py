"""The ``keras-normreg`` command line.

Subcommands: ``list`` (models, datasets), ``train RECIPE.toml [--set key=value ...]``,
``evaluate``, ``tune`` and ``demo`` (keras-tuner studies), and ``experiment NAME`` (the
document-producing experiments of a source checkout; ``study NAME``, its old name, still works
and says so).

The console script enters through the top-level module ``keras_normreg_cli`` (outside this
package, whose ``__init__`` imports Keras): it answers ``list`` from the static catalog
``keras_normreg/catalog.json`` without importing Keras, and sets ``TF_CPP_MIN_LOG_LEVEL`` and
``KERAS_BACKEND`` before importing this module for every other command. The catalog is
written from the live registries by :func:`write_catalog` (``make catalog``).

Errors a user can fix (a bad recipe, an unknown arch or dataset, an unwritable destination, a
damaged entry, a study locked by another process, a missing file) are printed as one line
``keras-normreg <command>: error: <message>`` with exit status 2 (``evaluate``: 1 for a card,
checksum or load error; ``train``: 3 for a NaN loss); ``--verbose`` re-raises them with the full
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import keras

from keras_normreg import _atomic, config, distribute
from keras_normreg._backend import SUPPORTED_BACKENDS
from keras_normreg._locks import LockError

#: The static catalog answered by ``keras-normreg list`` (see the module docstring).
CATALOG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog.json")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 with usage, like argparse, but a clearer prefix
        self.print_usage(sys.stderr)
        self.exit(2, f"keras-normreg: error: {message}\n")


def _recipe_choices() -> str:
    """The recipe keys restricted to a set of values, as read from the family tables now."""
    fields = config.choice_fields()
    width = max(len(k) for k in fields) + 2
    lines = [f"  {key:<{width}}{', '.join(str(v) for v in values)}"
             for key, values in fields.items()]
    lines.append(f"  {'train.strategy':<{width}}{distribute.STRATEGIES_HELP}")
    return "recipe keys with a fixed set of values (--set KEY=VALUE):\n" + "\n".join(lines)


def _verbose_argument(parser, default) -> None:
    parser.add_argument(
        "--verbose", action="store_true", default=default,
        help="show the full traceback of an error (instead of one line) and TensorFlow's "
             "start-up log")


def _backend_argument(parser) -> None:
    parser.add_argument(
        "--backend", choices=SUPPORTED_BACKENDS, default=None,
        help="Keras backend to run on (default: KERAS_BACKEND, else tensorflow); the command "
             "restarts itself with KERAS_BACKEND set, since Keras picks its backend at import")


def _rerun_on_backend(backend: str, argv) -> int:
    """Run this command again in a fresh interpreter with ``KERAS_BACKEND=backend``."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    args = list(sys.argv[1:] if argv is None else argv)
    return subprocess.call([sys.executable, "-m", "keras_normreg.cli", *args], env=env)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="keras-normreg",
        description="Normalization and regularization done right for Keras 3: train zoo models "
                    "from TOML recipes, evaluate saved models, tune λ × normalization.")
    _verbose_argument(p, False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("list", help="list zoo models and datasets")
    s.add_argument("what", nargs="?", choices=("models", "datasets", "all"), default="all")

    s = sub.add_parser("train", help="train a zoo model from a recipe TOML",
                       description="Train the model described by RECIPE (see zoo/*.toml). "
                                   "Example:\n  keras-normreg train zoo/mnist1d_cnn1d_batch.toml "
                                   "--set optimizer.learning_rate=0.05 --set train.epochs=5"
                                   "\n\nAn interrupted run resumes by default (auto): an "
                                   "unfinished run of the same recipe in the output folder is "
                                   "continued, one of a different recipe is refused; --fresh "
                                   "discards it, --resume requires it.",
                       epilog=_recipe_choices(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("recipe", help="path to a recipe TOML file")
    s.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a recipe key (TOML literal), repeatable")
    s.add_argument("--strategy", default=None,
                   help=f"{distribute.STRATEGIES_HELP} (overrides train.strategy)")
    s.add_argument("--download", action="store_true",
                   help="let tensorflow-datasets download a missing dataset")
    s.add_argument("--data-dir", default=None, help="tfds data_dir (overrides data.data_dir)")
    s.add_argument("--print-config", action="store_true",
                   help="print the resolved recipe and exit")
    s.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="JAX: train across processes (jax.distributed); process 0's address, "
                        "the same in every process (default: "
                        f"{distribute.PROCESS_ENV['coordinator']})")
    s.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="JAX: the number of processes (default: "
                        f"{distribute.PROCESS_ENV['num_processes']})")
    s.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="JAX: this process's id, 0 .. N-1; process 0 writes the outputs "
                        f"(default: {distribute.PROCESS_ENV['process_id']})")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--fresh", dest="resume", action="store_const", const="fresh",
                      help="discard an unfinished run of this recipe and start over")
    mode.add_argument("--resume", dest="resume", action="store_const", const="resume",
                      help="continue the unfinished run of this recipe; an error if there is "
                           "none")
    s.set_defaults(resume="auto")
    _backend_argument(s)

    s = sub.add_parser("evaluate", help="re-evaluate a saved model against its card")
    s.add_argument("path", help="saved_models/<name> directory")
    s.add_argument("--data-dir", default=None)
    _backend_argument(s)

    s = sub.add_parser(
        "tune", help="run a λ × normalization study (tuning/*.toml)",
        description="Run (or resume) the keras-tuner study described by STUDY (see tuning/*.toml):"
                    " a line per finished trial, then the leaderboard (Markdown + CSV), a heatmap"
                    " of the objective over λ × normalization and the best model exported with a"
                    " card. Running it again continues an interrupted study. Example: "
                    "keras-normreg tune tuning/tiny_digits.toml --workers 2")
    s.add_argument("study", help="path to a study TOML file (or the name of a shipped one)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="start a keras-tuner chief and N workers on this machine")
    s.add_argument("--role", choices=("chief", "worker"), default=None,
                   help="this process's role in a study spread over machines")
    s.add_argument("--oracle", default=None, metavar="HOST:PORT",
                   help="the chief's address (with --role)")
    s.add_argument("--worker-id", default=None, metavar="ID",
                   help="a worker's stable id (default worker-<hostname>); a restarted worker "
                        "reusing its id resumes its unfinished trial")
    s.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                   help="hand the trial of a worker silent for this long to another worker "
                        "(default: the study's distributed.worker_timeout, 600 s)")
    s.add_argument("--oracle-secret-file", default=None, metavar="PATH",
                   help="file (mode 600) holding the secret every call to the oracle carries; "
                        "default: $KERAS_NORMREG_ORACLE_SECRET or "
                        "$KERAS_NORMREG_ORACLE_SECRET_FILE (--workers makes a random one)")
    s.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="the chief's TLS certificate (with --tls-key)")
    s.add_argument("--tls-key", default=None, metavar="PEM",
                   help="the chief's TLS private key (mode 600)")
    s.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="the certificate a worker trusts (default: --tls-cert)")
    s.add_argument("--insecure", action="store_true",
                   help="let a chief on an address that is not loopback run without a secret")
    s.add_argument("--overwrite", action="store_true",
                   help="start the study over (delete its directory) instead of resuming")
    s.add_argument("--max-trials", type=int, default=None, metavar="N",
                   help="override budget.max_trials")
    s.add_argument("--directory", default=None,
                   help="override output.directory (the study goes to DIRECTORY/<name>/)")

    s = sub.add_parser("demo", help="the demo study: λ × normalization on embedded MNIST-1D "
                                    "(what `make demo` runs)")
    s.add_argument("--epochs", type=int, default=None, help="override the trials' epochs")
    s.add_argument("--max-trials", type=int, default=None, metavar="N",
                   help="run only the first N trials of the grid")
    s.add_argument("--directory", default=None, help="override output.directory")

    s = sub.add_parser(
        "experiment", aliases=list(RENAMED_COMMANDS),
        help="run an experiment that writes a Markdown report (l2-vs-bn: L2 vs BatchNorm on "
             "MNIST-1D; eta-only: is tuning η alone enough with the kernels on the sphere?; "
             "grokking: does the sphere remove the delay of grokking on modular addition?); "
             "`study` is its old name",
        description="Run one of the experiments of the source checkout (experiments/): each "
                    "writes docs/study_<name>.md and its data. (`keras-normreg study NAME`, the "
                    "old name of this command, still works.) Example: keras-normreg experiment "
                    "l2-vs-bn --epochs 5")
    s.add_argument("which", choices=tuple(EXPERIMENTS), help="the experiment to run")
    s.add_argument("--epochs", type=int, default=None,
                   help="epochs per run (default: l2-vs-bn 30, eta-only 20; grokking counts "
                        "steps and refuses it)")
    s.add_argument("--out", default=None,
                   help="folder for figures and data; the report is <out>.md (default: "
                        "docs/study_l2_vs_bn, docs/study_eta_only, docs/study_grokking)")
    # --verbose is accepted after the command too (`keras-normreg train r.toml --verbose`);
    # SUPPRESS keeps a subcommand from overwriting the global flag with its default
    for subparser in dict.fromkeys(sub.choices.values()):  # once each: aliases share one
        _verbose_argument(subparser, argparse.SUPPRESS)
    return p


def catalog() -> dict:
    """The zoo models and datasets as read from the live registries (what ``list`` prints), and
    the recipe choices of the family tables: ``{"models": [{name, family, description}],
    "datasets": [{name, input_shape, classes, splits}], "choices": {"model.norm": [...], ...},
    "lines": {"models": [...], "datasets": [...]}}`` (the printed lines).
    :data:`CATALOG_PATH` holds a copy, written by :func:`write_catalog`."""
    from keras_normreg import data, zoo

    models = []
    for name in zoo.list_models():
        spec = zoo.get_spec(name)
        models.append({"name": name, "family": spec.family, "description": spec.description})
    datasets = []
    for name in data.list_datasets():
        i = data.info(name)
        datasets.append({"name": name, "input_shape": list(i.input_shape),
                         "classes": i.num_classes, "splits": dict(i.splits)})
    # the recipe keys with a fixed set of values, read from the family tables (as in the help)
    choices = {key: list(values) for key, values in config.choice_fields().items()}
    cat = {"models": models, "datasets": datasets, "choices": choices}
    # the printed lines travel in the catalog, so that keras_normreg_cli (which must not import
    # this package) prints them without a formatter of its own
    cat["lines"] = {part: list_lines(cat, part) for part in ("models", "datasets")}
    return cat


def catalog_text(cat: dict) -> str:
    """The catalog as written to :data:`CATALOG_PATH` (stable: sorted by the registries)."""
    return json.dumps(cat, indent=1, ensure_ascii=False) + "\n"


def write_catalog(path: str = CATALOG_PATH) -> str:
    """Write :func:`catalog` to ``path`` (``make catalog``) and return the path."""
    _atomic.write_text(path, catalog_text(catalog()))
    return path


def list_lines(cat: dict, what: str = "all") -> list[str]:
    """The lines ``keras-normreg list WHAT`` prints for a catalog (:func:`catalog` stores them
    per part under ``"lines"`` for ``keras_normreg_cli``)."""
    lines = []
    if what in ("models", "all"):
        lines.append("models:")
        for m in cat["models"]:
            lines.append(f"  {m['name']:<16} {m['family']:<10} {m['description']}")
    if what in ("datasets", "all"):
        lines.append("datasets:")
        for d in cat["datasets"]:
            splits = ", ".join(f"{k}={v}" for k, v in d["splits"].items())
            lines.append(f"  {d['name']:<16} input={tuple(d['input_shape'])} "
                         f"classes={d['classes']} {splits}")
    return lines


def _cmd_list(args) -> int:
    print("\n".join(list_lines(catalog(), args.what)))
    return 0


def _run_training(cfg, *, save=True, command=None, resume="auto") -> int:
    from keras_normreg import train

    try:
        result = train.train(cfg, save=save, command=command, resume=resume)
    except train.NaNLossError as e:
        print(f"keras-normreg: error: {e}", file=sys.stderr)
        return 3
    print(f"test accuracy: {result.test_accuracy:.4f}  test loss: {result.test_loss:.4f}  "
          f"({result.train_seconds:.1f} s training)")
    if result.get("path"):
        print(f"saved: {result.path}/model.keras (+ card.json, recipe.toml)")
    return 0


def _check_names(cfg, recipe) -> None:
    """Refuse an unknown ``model.arch`` / ``data.dataset`` before any data is loaded (the
    registries are the zoo's and the data package's, which the config module cannot import)."""
    from keras_normreg import data, zoo

    arch, dataset = cfg["model"]["arch"], cfg["data"]["dataset"]
    if arch not in zoo.list_models():
        raise config.ConfigError(
            f"{recipe}: Config key 'model.arch' must be a zoo model ({', '.join(zoo.list_models())}"
            f"; see `keras-normreg list models`). Received: model.arch={arch!r}")
    try:
        data.info(dataset)
    except ValueError as e:
        why = one_line(e).split(" Received:")[0]
        raise config.ConfigError(
            f"{recipe}: Config key 'data.dataset' must be a known dataset (see `keras-normreg "
            f"list datasets`): {why} Received: data.dataset={dataset!r}") from None


def _check_folder_option(option: str, value, *, written: bool = False) -> None:
    """Refuse a folder option now with a one-line error naming it, instead of an OSError from
    deep inside a run (or an empty path silently meaning the default): empty, a NUL or control
    character (:func:`keras_normreg.config.path_problem`), and for a folder that is read a
    file in the way (:func:`keras_normreg.config.folder_problem`; a ``written`` folder gets
    that from the writability check of the command before anything runs)."""
    check = config.path_problem if written else config.folder_problem
    problem = None if value is None else check(value)
    if problem:
        dest = option.lstrip("-").replace("-", "_")
        raise config.ConfigError(f"{option} {problem}. Received: {dest}={value!r}")


def _cmd_train(args) -> int:
    overrides = list(args.overrides)
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy!r}".replace("'", '"'))
    if args.download:
        overrides.append("data.download=true")
    if args.data_dir is not None:
        # a TOML string (JSON's escapes are TOML's): a quote or a backslash in the path stays
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    cfg = config.load_recipe(args.recipe, overrides)
    _check_names(cfg, args.recipe)
    if args.print_config:
        print(config.dumps(cfg), end="")
        return 0
    command = " ".join(["keras-normreg", "train", args.recipe,
                        *[f"--set {o}" for o in args.overrides]]
                       + (["--strategy", args.strategy] if args.strategy else []))
    processes = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in processes) or any(
            os.environ.get(var) for var in distribute.PROCESS_ENV.values()):
        # before any JAX computation: every process then trains its part of each batch
        distribute.initialize_processes(*processes)
    return _run_training(cfg, command=command, resume=args.resume)


def _cmd_evaluate(args) -> int:
    from keras_normreg import saving

    _check_folder_option("--data-dir", args.data_dir)
    try:
        report = saving.evaluate_saved(args.path, data_dir=args.data_dir, strict=False)
    except (saving.CardError, saving.ChecksumError, saving.EntryLoadError) as e:
        if getattr(args, "verbose", False):
            raise
        print(f"keras-normreg evaluate: error: {one_line(e)}", file=sys.stderr)
        return 1
    card, got = report["card"], report["measured"]
    print(f"{report['name']}:")
    print(f"  {'metric':<14}{'card':>12}{'measured':>12}")
    for key in ("test_accuracy", "test_loss"):
        print(f"  {key:<14}{card[key]:>12.6f}{got[key]:>12.6f}")
    print("  match" if report["match"] else "  MISMATCH")
    return 0 if report["match"] else 1


def _tune_command(args) -> str:
    parts = ["keras-normreg", "tune", args.study]
    for flag in ("workers", "role", "oracle", "worker_id", "worker_timeout", "max_trials",
                 "directory", "oracle_secret_file", "tls_cert", "tls_key", "tls_ca"):
        value = getattr(args, flag)
        if value is not None:
            parts += ["--" + flag.replace("_", "-"), str(value)]
    return " ".join(parts + (["--overwrite"] if args.overwrite else [])
                    + (["--insecure"] if args.insecure else []))


def _cmd_tune(args) -> int:
    from keras_normreg.tuning import launcher
    from keras_normreg.tuning import spec as nr_spec

    try:
        if args.workers is not None and (args.role or args.oracle or args.worker_id
                                         or args.insecure):
            raise ValueError("--workers starts its own chief and workers on this machine; it "
                             "does not combine with --role/--oracle/--worker-id/--insecure. "
                             f"Received: workers={args.workers}, role={args.role!r}")
        _check_folder_option("--directory", args.directory, written=True)
        path = nr_spec.find_spec(args.study)
        spec = nr_spec.load_study(path, max_trials=args.max_trials)
        if args.workers is not None:
            return launcher.run_local(
                path, args.workers, project_dir=nr_spec.project_dir(spec, args.directory),
                directory=args.directory, overwrite=args.overwrite, max_trials=args.max_trials,
                worker_timeout=args.worker_timeout, secret_file=args.oracle_secret_file,
                tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca)
        from keras_normreg.tuning import study as nr_study

        nr_study.run_study(spec, directory=args.directory, overwrite=args.overwrite,
                           role=args.role, oracle=args.oracle, worker_id=args.worker_id,
                           command=_tune_command(args), worker_timeout=args.worker_timeout,
                           secret_file=args.oracle_secret_file, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, tls_ca=args.tls_ca, insecure=args.insecure)
        return 0
    except (ValueError, launcher.DistributedDependencyError, OSError) as e:
        if isinstance(e, FileNotFoundError) or getattr(args, "verbose", False):
            raise
        print(f"keras-normreg tune: error: {one_line(e)}", file=sys.stderr)
        return 2


DEMO_STUDY = "mnist1d_lambda_norm"


def _cmd_demo(args) -> int:
    from keras_normreg.tuning import spec as nr_spec

    if args.epochs is not None and args.epochs < 1:
        raise config.ConfigError(f"--epochs must be >= 1. Received: epochs={args.epochs}")
    _check_folder_option("--directory", args.directory, written=True)
    path = os.path.join(os.path.dirname(os.path.abspath(nr_spec.__file__)), "specs",
                        DEMO_STUDY + ".toml")
    raw = config.read_toml(path)
    if args.epochs is not None:
        raw.setdefault("base", {}).setdefault("train", {})["epochs"] = args.epochs
    spec = nr_spec.resolve_study(raw, max_trials=args.max_trials)
    spec["_path"] = f"tuning/{DEMO_STUDY}.toml"
    # the demo keeps its exported model inside its own directory, away from saved_models/
    spec["output"]["export_dir"] = os.path.join(nr_spec.project_dir(spec, args.directory),
                                                "saved_models")
    from keras_normreg.tuning import study as nr_study
    from keras_normreg.tuning.space import space_to_toml

    sp = spec["space"]
    print(f"keras-normreg demo: study {spec['name']} (tuning/{DEMO_STUDY}.toml): "
          f"{spec['base']['model']['arch']} on MNIST-1D, norms {sp['norms']} x decay "
          f"{sp['decay']} x λ {space_to_toml(sp).get('lambda')}, {spec['base']['train']['epochs']} "
          f"epochs per trial, grid search on validation accuracy; the best is tested once.",
          flush=True)
    command = "keras-normreg demo" + (f" --epochs {args.epochs}" if args.epochs else "") + \
        (f" --max-trials {args.max_trials}" if args.max_trials else "")
    result = nr_study.run_study(spec, directory=args.directory, overwrite=True, command=command)
    return 0 if result["done"] else 1


def _source_root() -> str:
    """The checkout this package runs from: the parent of the ``keras_normreg`` folder."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: ``keras-normreg experiment NAME`` -> the module of the source checkout that runs it (its
#: ``cli(epochs=, out=, which=)``; an option left out keeps the experiment's own default).
#: "Experiment" is a run that writes a document (docs/study_<name>.md); a "study" is a
#: keras-tuner search (``keras-normreg tune``).
EXPERIMENTS = {"l2-vs-bn": "experiments.l2_vs_bn", "eta-only": "experiments.eta_only.study",
               "grokking": "experiments.grokking.study"}

#: Old command names -> the command that replaced them (they still run it, after a note).
RENAMED_COMMANDS = {"study": "experiment"}


def _cmd_experiment(args) -> int:
    # The experiments are part of the source checkout (experiments/), not of the package.
    new_name = RENAMED_COMMANDS.get(args.command)
    if new_name is not None:
        print(f"keras-normreg {args.command}: note: the command is now `keras-normreg "
              f"{new_name}` (`{args.command}` still works).", file=sys.stderr)
    root = _source_root()
    module = EXPERIMENTS[args.which]
    if not os.path.isfile(os.path.join(root, *module.split(".")) + ".py"):
        print(f"keras-normreg {args.command}: error: the experiments run from a source "
              f"checkout (no experiments/ next to the installed package in {root}); clone the "
              f"repository, `pip install -e .` in it and run `keras-normreg experiment "
              f"{args.which}` there.", file=sys.stderr)
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    import importlib

    experiment = importlib.import_module(module)
    _check_folder_option("--out", args.out)
    options = {k: v for k, v in (("epochs", args.epochs), ("out", args.out)) if v is not None}
    return experiment.cli(**options, which=args.which)


COMMANDS = {
    "list": _cmd_list,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "tune": _cmd_tune,
    "demo": _cmd_demo,
    "experiment": _cmd_experiment,
}
COMMANDS.update({old: COMMANDS[new] for old, new in RENAMED_COMMANDS.items()})


#: What main() reports as one line (exit 2) instead of a traceback: config errors, unknown
#: arch/dataset, saving's DestinationError/EntryLoadError and train's run-state errors are
#: ValueErrors; a study or run held by another process is a LockError; OSError covers missing
#: files (FileNotFoundError), permissions and a full disk.
USER_ERRORS = (ValueError, LockError, OSError)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its lines joined; the class name if empty)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    backend = getattr(args, "backend", None)
    if backend is not None and backend != keras.backend.backend():
        return _rerun_on_backend(backend, argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        if getattr(args, "verbose", False):
            raise
        print(f"keras-normreg {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--write-catalog"]:  # `make catalog`
        print(f"wrote {write_catalog()}")
        sys.exit(0)
    sys.exit(main())
