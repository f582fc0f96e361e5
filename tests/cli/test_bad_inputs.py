"""Bad files, directories, checkpoints and resume state: one line, exit status 2, no traceback.

Configuration values have their own table in ``test_train_cli.py``; this one covers what
the configuration points at. Each case prepares its input in ``tmp_path`` and returns the
command line; a case that resumes an existing run also checks that no result file of that
run changed.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

DEBUG = ["experiment=debug", "progress=false"]
NPZ = [*DEBUG, "dataset=npz"]
BASE = [
    *DEBUG,
    "privacy=user_dp",
    "privacy.noise_multiplier=1.0",
    "model=mlp",
    "model.hidden=[16,16]",
    "rounds=4",
    "checkpoint.every=2",
]


PRIVATE = ["privacy=user_dp", "privacy.noise_multiplier=1.0"]


def _good(n: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, 8), dtype=np.float32), "y": rng.integers(0, 4, n)}


def _npz(tmp: Path, **arrays) -> list[str]:
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return [*NPZ, f"dataset.path={path}"]


def _bytes(tmp: Path, content: bytes) -> list[str]:
    path = tmp / "data.npz"
    path.write_bytes(content)
    return [*NPZ, f"dataset.path={path}"]


def _truncated(tmp: Path) -> list[str]:
    _npz(tmp, **_good())
    data = (tmp / "data.npz").read_bytes()
    return _bytes(tmp, data[: len(data) // 2])


def _object_array(tmp: Path) -> list[str]:
    path = tmp / "data.npz"
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, int))
    return [*NPZ, f"dataset.path={path}"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished private run with checkpoints at rounds 3 (the round before the last, which
    displaces round 2 under checkpoint.keep=2) and 4."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    proc = run_cli("fedpriv.train", *BASE, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3", "4"]
    return run_dir


def _resume(edit):
    """A case that copies the base run, applies ``edit(run_dir)`` and resumes it."""

    def setup(tmp: Path, base: Path) -> list[str]:
        run_dir = tmp / "run"
        shutil.copytree(base, run_dir)
        extra = edit(run_dir) or []
        return [*BASE, "resume=true", *extra, f"hydra.run.dir={run_dir}"]

    setup.resumes = True
    return setup


def _meta(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "4" / "meta" / "metadata"


def _bad_meta(run_dir: Path) -> None:
    _meta(run_dir).write_text("{not json")


def _corrupt_arrays(run_dir: Path) -> None:
    for f in (run_dir / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")


def _wrong_shape(run_dir: Path) -> list[str]:
    meta = json.loads(_meta(run_dir).read_text())
    meta["config"]["model"]["hidden"] = [8, 16]  # arrays stay (64, 16): a mismatched copy
    _meta(run_dir).write_text(json.dumps(meta))
    return ["model.hidden=[8,16]"]


def _ledger_edit(fn):
    def edit(run_dir: Path) -> None:
        path = run_dir / "ledger.jsonl"
        lines = path.read_text().splitlines()
        path.write_text("".join(x + "\n" for x in fn(lines)))

    return edit


def _edit_record(lines: list[str]) -> list[str]:
    rec = json.loads(lines[0])
    rec["realised_cohort"] = 4
    return [json.dumps(rec), *lines[1:]]


def _unknown_field(lines: list[str]) -> list[str]:
    rec = json.loads(lines[-1])
    rec["round"], rec["bogus"] = 5, 1
    return [*lines, json.dumps(rec)]


def _short_metrics(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    path.write_text(path.read_text().splitlines(keepends=True)[0])


def _checkpoints_file(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").write_text("not a directory\n")


def _under_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*DEBUG, f"hydra.run.dir={tmp / 'afile' / 'run'}"]


def _is_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*DEBUG, f"hydra.run.dir={tmp / 'afile'}"]


def _sweep_under_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["-m", *DEBUG, "seed=0,1", f"hydra.sweep.dir={tmp / 'afile' / 'sweep'}"]


CASES = [
    # data files
    (
        "npz-missing",
        lambda t: [*NPZ, f"dataset.path={t / 'none.npz'}"],
        "dataset.path",
        "does not exist",
    ),
    ("npz-no-path", lambda t: NPZ, "dataset.path", "is required"),
    ("npz-directory", lambda t: [*NPZ, f"dataset.path={t}"], "dataset.path", "is a directory"),
    ("npz-not-zip", lambda t: _bytes(t, b"x,y\n1,2\n"), "dataset.path", "not a readable .npz"),
    ("npz-truncated", _truncated, "dataset.path", "not a readable .npz"),
    ("npz-no-y", lambda t: _npz(t, x=_good()["x"]), "dataset.path", "has no array 'y'"),
    (
        "npz-rows",
        lambda t: _npz(t, x=_good()["x"], y=_good()["y"][:150]),
        "dataset.path",
        "200 rows but y has 150",
    ),
    (
        "npz-x-1d",
        lambda t: _npz(t, x=np.zeros(200, np.float32), y=_good()["y"]),
        "dataset.path",
        "x must have shape [N, features...]",
    ),
    (
        "npz-y-2d",
        lambda t: _npz(t, x=_good()["x"], y=np.zeros((200, 2), int)),
        "dataset.path",
        "y must have shape [N]",
    ),
    (
        "npz-y-float",
        lambda t: _npz(t, x=_good()["x"], y=np.zeros(200)),
        "dataset.path",
        "integer labels",
    ),
    ("npz-objects", _object_array, "dataset.path", "Python objects"),
    (
        "npz-negative-label",
        lambda t: _npz(t, x=_good()["x"], y=-np.ones(200, int)),
        "dataset.path",
        "labels must be >= 0",
    ),
    (
        "npz-nan",
        lambda t: _npz(t, x=np.full((200, 8), np.nan, np.float32), y=_good()["y"]),
        "dataset.path",
        "non-finite",
    ),
    ("npz-too-few", lambda t: _npz(t, **_good(12)), "dataset.num_clients", "need at least 20"),
    (
        "npz-label-range",
        lambda t: [*_npz(t, **_good()), "dataset.num_classes=3"],
        "dataset.path",
        "labels must be in [0, 2]",
    ),
    (
        "npz-private-classes-from-labels",
        lambda t: [*_npz(t, **_good()), *PRIVATE],
        "dataset.num_classes",
        "largest label",
    ),
    (
        "npz-strict-without-test-set",
        lambda t: [
            *_npz(t, **_good()),
            *PRIVATE,
            "dataset.num_classes=4",
            "privacy.release=strict",
        ],
        "dataset.path",
        "has no x_test, y_test",
    ),
    (
        "npz-cnn-flat",
        lambda t: [*_npz(t, **_good()), "model=cnn"],
        "dataset.path",
        "model cnn needs images",
    ),
    (
        "npz-test-shape",
        lambda t: _npz(
            t, **_good(), x_test=np.zeros((10, 9), np.float32), y_test=np.zeros(10, int)
        ),
        "dataset.path",
        "x_test examples have shape",
    ),
    # output directories
    ("dir-under-file", _under_file, "hydra.run.dir", "is a file, not a directory"),
    ("dir-is-file", _is_file, "hydra.run.dir", "is a file, not a directory"),
    (
        "dir-unwritable",
        lambda t: [*DEBUG, "hydra.run.dir=/proc/fedpriv-run"],
        "hydra.run.dir",
        "cannot be created",
    ),
    ("sweep-dir-under-file", _sweep_under_file, "hydra.sweep.dir", "not a directory"),
    # checkpoints and resume state
    ("ckpt-corrupt-arrays", _resume(_corrupt_arrays), "checkpoints/4/state", "cannot be read"),
    (
        "ckpt-corrupt-meta",
        _resume(_bad_meta),
        "checkpoints/4/meta/metadata",
        "not valid JSON",
    ),
    (
        "ckpt-missing-meta",
        _resume(lambda d: _meta(d).unlink()),
        "checkpoints/4/meta/metadata",
        "is missing",
    ),
    (
        "ckpt-wrong-shape",
        _resume(_wrong_shape),
        "checkpoints/4/state",
        "has shape (16,) but this configuration needs (8,)",
    ),
    ("ckpt-not-a-dir", _resume(_checkpoints_file), "checkpoints", "is not a directory"),
    ("resume-other-config", _resume(lambda d: ["seed=1"]), "seed", "must use the same value"),
    (
        "ledger-bad-json",
        _resume(_ledger_edit(lambda ls: [*ls[:2], "{oops", *ls[2:]])),
        "ledger.jsonl",
        "line 3 is not valid JSON",
    ),
    (
        "ledger-shrunk",
        _resume(_ledger_edit(lambda ls: ls[:2])),
        "ledger.jsonl",
        "must never shrink",
    ),
    ("ledger-edited", _resume(_ledger_edit(_edit_record)), "ledger.jsonl", "differs from the copy"),
    (
        "ledger-unknown-field",
        _resume(_ledger_edit(_unknown_field)),
        "ledger.jsonl",
        "bogus: is not a field",
    ),
    ("metrics-shrunk", _resume(_short_metrics), "metrics.jsonl", "has 1 records"),
    # run-control values added with checkpoints (not in the configuration table)
    ("resume-not-bool", lambda t: [*DEBUG, "resume=maybe"], "resume", "true or false"),
    ("checkpoint-every", lambda t: [*DEBUG, "checkpoint.every=-1"], "checkpoint.every", "[0, inf]"),
    ("checkpoint-keep", lambda t: [*DEBUG, "checkpoint.keep=0"], "checkpoint.keep", "[1, inf]"),
    (
        "nan-client-id",
        lambda t: [*DEBUG, "faults.nan_clients=[25]"],
        "faults.nan_clients",
        "[0, 19]",
    ),
]


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Hashes of the run's result files (Hydra's own ``.hydra`` and log are not results)."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if p.is_file() and rel.parts[0] != ".hydra" and p.suffix != ".log":
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("setup,field,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, request, setup, field, fragment):
    if request.node.callspec.id == "dir-unwritable" and not Path("/proc").is_dir():
        pytest.skip("needs Linux /proc")
    resumes = getattr(setup, "resumes", False)
    args = setup(tmp_path, request.getfixturevalue("base_run")) if resumes else setup(tmp_path)
    run_dir = Path(args[-1].split("=", 1)[1]) if args[-1].startswith("hydra.run.dir=") else None
    before = _snapshot(run_dir) if resumes else None
    proc = run_cli("fedpriv.train", *args)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedpriv: error: ")
    assert field in lines[0] and fragment in lines[0], lines[0]
    if resumes:
        assert _snapshot(run_dir) == before  # nothing of the existing run was overwritten
    elif run_dir is not None and run_dir.is_relative_to(tmp_path):
        assert not (run_dir / "metrics.jsonl").exists()


def test_the_bad_input_tables_together_hold_well_over_25_cases():
    from tests.cli.test_train_cli import BAD_INPUTS

    assert len(CASES) >= 25 and len(CASES) + len(BAD_INPUTS) >= 50
