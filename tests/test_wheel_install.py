"""The package as users get it: built into a wheel, installed, used from another folder.

The wheel is built the way ``python -m build`` builds one, offline: an sdist of a copy of the
sources, then the wheel from the unpacked sdist (``pip wheel --no-deps --no-build-isolation
--no-index``). Building from a copy keeps the checkout free of build/ and *.egg-info and keeps a
stale build/ folder out of the wheel; building through the sdist checks that the sdist carries
the shipped entries too.

The references are the repository's own files: its saved_models/<entry>/ folders (bytes, and
the cards' sha256 and metrics) and keras_normreg/catalog.json, never the installed code's answers.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "saved_models"
ENTRIES = sorted(p.name for p in SAVED.iterdir() if (p / "card.json").is_file())
ENTRY = "mnist1d_cnn1d_batch"
#: what the build reads (setup.py / MANIFEST.in when there is one)
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "setup.py", "keras_normreg_cli.py",
           "keras_normreg", "saved_models")
#: files written into the copy's entry folder before the build: a writer's lock and a
#: half-written temporary (saving.ENTRY_LOCK_FILE, saving._TMP_PREFIX) must not be shipped
STRAYS = (".entry.lock", ".tmp-123-abcd1234-model.keras")


def _run(cmd, *, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{cmd} exited with {result.returncode}\n--- stdout\n"
                             f"{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def _build_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "KERAS_NORMREG_SAVED_MODELS")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, src / name)
    for stray in STRAYS:
        (src / "saved_models" / ENTRY / stray).write_bytes(b"not part of the entry")
    env = _build_env()
    sdist_dir, wheel_dir = tmp / "sdist", tmp / "dist"
    out = _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                "print(b.build_sdist(sys.argv[1]))", sdist_dir], cwd=src, env=env)
    sdist = sdist_dir / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        # filter="data" where tarfile has it (Python >= 3.10.12 / 3.11.4)
        tar.extractall(tmp / "unpacked",
                       **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", wheel_dir, unpacked], cwd=tmp, env=env)
    (built,) = wheel_dir.glob("keras_normreg-*.whl")
    return built


def test_wheel_holds_the_package_and_every_shipped_entry(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        # every module of the source tree (a subpackage missing from pyproject.toml's
        # [tool.setuptools] packages would be left out), the console script's module, the data
        missing = sorted(
            f"keras_normreg/{p.relative_to(ROOT / 'keras_normreg').as_posix()}"
            for p in (ROOT / "keras_normreg").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json",
                                                                             ".toml"))
        missing = [n for n in missing + ["keras_normreg_cli.py"] if n not in names]
        assert not missing, f"not in the wheel: {missing}"
        # every file of every entry, byte for byte, and nothing else under saved_models/
        expected = {f"keras_normreg/saved_models/{e}/{f.name}": f
                    for e in ENTRIES for f in (SAVED / e).iterdir()
                    if f.is_file() and not f.name.startswith(".")}
        shipped = {n for n in names if n.startswith("keras_normreg/saved_models/")}
        assert shipped == set(expected), (sorted(set(expected) - shipped),
                                          sorted(shipped - set(expected)))
        assert ENTRY in ENTRIES
        for name, path in expected.items():
            assert z.read(name) == path.read_bytes(), name
        for e in ENTRIES:
            card = json.loads((SAVED / e / "card.json").read_text(encoding="utf-8"))
            data = z.read(f"keras_normreg/saved_models/{e}/{card['model_file']}")
            assert hashlib.sha256(data).hexdigest() == card["sha256"], e
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert re.search(r"^keras-normreg = keras_normreg_cli:main$",
                         z.read(entry_points).decode(), re.M)


PROBE = """
import json, sys
import keras_normreg, keras_normreg_cli
from keras_normreg import saving, zoo
name, mine, broken = sys.argv[1:4]
model = zoo.load(name)
out = {
    "package": keras_normreg.__file__,
    "cli": keras_normreg_cli.__file__,
    "dirs": [str(d) for d in saving.saved_models_dirs()],
    "found": str(saving.find_entry(name)),
    "pretrained": zoo.list_pretrained(),
    "params": model.count_params(),
    "params_from_folder": zoo.load(mine).count_params(),
}
try:
    zoo.load(broken)
    out["broken"] = "loaded"
except saving.ChecksumError as e:
    out["broken"] = str(e)
print("PROBE " + json.dumps(out))
"""


@pytest.mark.slow  # ~40-60 s on 2 busy cores: three interpreters, two of them import Keras
def test_installed_wheel_works_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
          "--target", site, wheel], cwd=tmp_path, env=_build_env())
    # `python -S`: no site.py, so no .pth file runs (the editable finder of the development
    # install among them); sys.path is the install, then the interpreter's own site-packages
    # (Keras, TensorFlow ...), and the (empty) current folder
    libs = [site] + sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    assert not any(Path(p).resolve().is_relative_to(ROOT) for p in libs[1:]), libs
    env = _build_env()
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in libs),
               TFDS_DATA_DIR=str(tmp_path / "tfds"),  # evaluate builds MNIST-1D there offline
               TF_CPP_MIN_LOG_LEVEL="3")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = [sys.executable, "-S"]
    installed = site / "keras_normreg" / "saved_models"

    # `keras-normreg list` through the console script pip wrote: the catalog's lines
    script = site / "bin" / "keras-normreg"
    listed = _run(python + [script, "list"], cwd=elsewhere, env=env).stdout
    catalog = json.loads((ROOT / "keras_normreg" / "catalog.json").read_text(encoding="utf-8"))
    assert listed.splitlines() == catalog["lines"]["models"] + catalog["lines"]["datasets"]

    # zoo.load by name (the installed entry), by folder path, and a corrupted copy refused
    mine, broken = tmp_path / "mine" / ENTRY, tmp_path / "broken" / ENTRY
    shutil.copytree(SAVED / ENTRY, mine)
    shutil.copytree(SAVED / ENTRY, broken)
    with open(broken / "model.keras", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    out = _run(python + ["-c", PROBE, ENTRY, mine, broken], cwd=elsewhere, env=env).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("PROBE ")]
    probe = json.loads(line[len("PROBE "):])
    assert Path(probe["package"]).resolve().is_relative_to(site.resolve()), probe["package"]
    assert Path(probe["cli"]).resolve().is_relative_to(site.resolve()), probe["cli"]
    assert not any(Path(d).resolve().is_relative_to(ROOT) for d in probe["dirs"]), probe["dirs"]
    assert Path(probe["found"]) == installed / ENTRY
    assert probe["pretrained"] == ENTRIES
    card = json.loads((SAVED / ENTRY / "card.json").read_text(encoding="utf-8"))
    assert probe["params"] == probe["params_from_folder"] == card["parameters"]
    assert "does not match the card" in probe["broken"], probe["broken"]

    # `keras-normreg evaluate NAME` from the other folder: the card's accuracy is measured again
    result = _run(python + ["-m", "keras_normreg_cli", "evaluate", ENTRY], cwd=elsewhere,
                  env=env)
    rows = {m[1]: (m[2], m[3]) for m in
            re.finditer(r"^\s+(test_\w+)\s+(\S+)\s+(\S+)$", result.stdout, re.M)}
    # test_correct / test_examples printed with 6 decimals (1000 examples: exact)
    accuracy = f"{card['metrics']['test_accuracy']:.6f}"
    assert rows["test_accuracy"] == (accuracy, accuracy), result.stdout
    assert result.stdout.splitlines()[-1].strip() == "match", result.stdout
