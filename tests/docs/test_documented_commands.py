"""Every shell command the documentation shows is run by a test.

The commands are read from the fenced code blocks of ``README.md``, ``docs/**/*.md``,
``experiments/README.md`` and ``notebooks/README.md``: every line of a ``bash``/``sh`` block,
and the ``$ `` lines of a ``console``/``shell`` block (or of a block without a language), with
``\\`` continuation lines joined and ``#`` comments dropped. Each command is either

(a) run here: the commands of the console scripts (``fedpriv-train``, ``fedpriv-audit``, ...)
    run one after another in a Python process (``tests/docs/run_commands.py``; two processes
    on two cores, a code block's commands in one), in a work directory under ``tmp_path`` so
    relative paths (``runs/canary``, ``data/mnist``) land there, shrunk by the rules of
    :data:`TRAIN_SHRINK` (a few rounds, a few clients, every run directory inside the work
    directory), with the files they read written first (:data:`SETUP`). A command must exit
    0; a documented bad-input example (its output shows ``fedpriv: error: ...``) must exit 2
    with that line; or

(b) listed in :data:`COVERED_ELSEWHERE` with the test that runs it (``path::function``), whose
    source must contain the command's distinctive parts; or, for ``make`` targets, checked
    against the ``Makefile`` and ``.ci/run`` (:data:`MAKE_TARGETS`).

A documented command that is neither is a failure: a command added to the documentation
needs a test.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.data import format_writers as fw

# --- reading the commands out of the documentation ----------------------------------------------

#: The documentation whose commands must run.
DOC_GLOBS = ("README.md", "docs/**/*.md", "experiments/README.md", "notebooks/README.md")
#: Blocks whose every line is a command; blocks of the other kinds hold commands after ``$ ``.
SCRIPT_LANGS = {"bash", "sh", "zsh"}
PROMPT_LANGS = {"console", "shell", "shell-session", "text", ""}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Documented:
    """One command as the documentation shows it."""

    command: str  # normalised: shlex-split (comments dropped) and joined again
    places: list[str] = field(default_factory=list)  # "file:line"
    output: list[str] = field(default_factory=list)  # lines shown after a `$ ` command
    block: str = ""  # "file:line" of the code block first showing it


def doc_files() -> list[Path]:
    found = {p for pattern in DOC_GLOBS for p in REPO.glob(pattern) if p.is_file()}
    return sorted(found)


def normalise(command: str) -> str:
    return shlex.join(shlex.split(command, comments=True))


def _blocks(text: str):
    """Yields (language, first line number, lines) of every fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        yield lang, start + 1, body


def _commands(lang: str, first: int, body: list[str]):
    """Yields (line number, command text, output lines) of one code block."""
    prompt = lang not in SCRIPT_LANGS
    if lang not in SCRIPT_LANGS | PROMPT_LANGS:
        return
    current: list[str] | None = None
    found: list[tuple[int, list[str], list[str]]] = []
    for n, raw in enumerate(body, first):
        line = raw.rstrip()
        if current is not None and current[-1].endswith("\\"):
            current[-1] = current[-1][:-1]
            current.append(line.strip())
            continue
        text = line.strip()
        if text.startswith("$ "):
            current = [text[2:]]
            found.append((n, current, []))
        elif prompt:
            if found:
                found[-1][2].append(text)
            current = None
        elif text and not text.startswith("#"):
            current = [text]
            found.append((n, current, []))
        else:
            current = None
    for n, parts, output in found:
        yield n, " ".join(parts), [o for o in output if o]


@functools.cache
def documented() -> dict[str, Documented]:
    """Every documented command, in the order the documentation shows them."""
    out: dict[str, Documented] = {}
    for path in doc_files():
        rel = path.relative_to(REPO).as_posix()
        for lang, first, body in _blocks(path.read_text()):
            for n, text, output in _commands(lang, first, body):
                cmd = normalise(text)
                if not cmd:
                    continue
                entry = out.setdefault(cmd, Documented(cmd, block=f"{rel}:{first}"))
                entry.places.append(f"{rel}:{n}")
                entry.output = entry.output or output
    return out


# --- (b) commands run by other tests ------------------------------------------------------------

SWEEPS = "tests/cli/test_sweeps.py"
TRAIN_CLI = "tests/cli/test_train_cli.py"
RESUME_KILLED = (
    "tests/cli/test_resume.py::"
    "test_sigkill_then_resume_is_bit_identical_and_ledger_counts_every_round"
)
DOCS_BUILD = "tests/docs/test_docs_build.py::test_site_builds_strict"
LAPLACE = (
    "tests/privacy/test_laplace_mechanism.py::"
    "test_documented_commands_train_and_audit_a_laplace_run"
)

#: Command -> (the test that runs it, parts of the command its source must contain). These
#: need what a test cannot have here (a network, a SLURM cluster, a killed process) or take
#: minutes, and an existing test runs them, shrunk the same way.
COVERED_ELSEWHERE: dict[str, tuple[str, tuple[str, ...]]] = {
    # a sweep of 4 runs, on the debug preset
    "fedpriv-train -m algorithm=fedavg,fedadam seed=0,1": (
        f"{TRAIN_CLI}::test_multirun_sweep",
        ('"-m"', '"algorithm=fedavg,fedadam"', '"seed=0,1"'),
    ),
    # killed at a random round with SIGKILL, then resumed: bit-identical to an uninterrupted run
    "fedpriv-train experiment=debug rounds=500 hydra.run.dir=runs/a": (
        RESUME_KILLED,
        ("_start(run_dir)", "signal.SIGKILL"),
    ),
    "fedpriv-train experiment=debug rounds=500 hydra.run.dir=runs/a resume=true": (
        RESUME_KILLED,
        ('"resume=true"', 'f"hydra.run.dir={run_dir}"'),
    ),
    # the example sweep (3 of its 5 budgets, 2 of its 3 seeds, 30 rounds) and its report
    "fedpriv-train -m privacy=user_dp privacy.target_epsilon=0.5,1,2,4,8 seed=0,1,2 "
    "hydra/launcher=local hydra.sweep.dir=multirun/eps": (
        f"{SWEEPS}::test_example_sweep_with_joblib_gives_a_rising_privacy_utility_curve",
        ('"-m"', "*EXAMPLE", '"hydra/launcher=local"', 'f"hydra.sweep.dir={sweep}"'),
    ),
    "fedpriv-report multirun/eps": (
        f"{SWEEPS}::test_example_sweep_with_joblib_gives_a_rising_privacy_utility_curve",
        ('"fedpriv.cli.report", str(sweep)',),
    ),
    # submitted to stand-ins for sbatch and srun: the job array it would queue
    "fedpriv-train -m hydra/launcher=slurm hydra.launcher.partition=a100 "
    "hydra.launcher.timeout_min=90 privacy.target_epsilon=1,2,4,8 seed=0,1,2": (
        f"{SWEEPS}::test_slurm_launcher_composes_the_requested_job_array",
        (
            '"hydra/launcher=slurm"',
            '"hydra.launcher.partition=a100"',
            '"hydra.launcher.timeout_min=90"',
            '"privacy.target_epsilon=1,4"',
        ),
    ),
    # 2 of the 30 trials, on the debug preset
    "fedpriv-train -m hparams_search=dp_optuna privacy.target_epsilon=2 "
    "hydra.sweeper.n_trials=30": (
        f"{SWEEPS}::test_optuna_preset_tunes_learning_rates_and_clip_at_a_fixed_epsilon",
        ('"hparams_search=dp_optuna"', '"privacy.target_epsilon=2"', '"hydra.sweeper.n_trials='),
    ),
    # the training guide's command on the debug preset (1 round, 20 clients)
    "fedpriv-train model=cnn algorithm=fedadam client.epochs=5 client.batch_size=10": (
        f"{TRAIN_CLI}::test_sampling_and_models_from_the_shell",
        ('"model=cnn"', '"algorithm=fedadam"', '"client.epochs=5"', '"client.batch_size=10"'),
    ),
    # the debug preset as documented (the run a later bad command must not touch)
    "fedpriv-train experiment=debug": (
        f"{TRAIN_CLI}::test_bad_config_does_not_touch_an_earlier_run",
        ('run_cli("fedpriv.train", *DEBUG, f"hydra.run.dir={run_dir}")',),
    ),
    # a fixed noise multiplier on the command line replaces the target (2.0 there)
    "fedpriv-train privacy=user_dp privacy.noise_multiplier=1.0": (
        f"{TRAIN_CLI}::test_noise_multiplier_on_the_command_line_replaces_the_target",
        ('"privacy=user_dp"', '"privacy.noise_multiplier='),
    ),
    # a calibrated target (6 there) is met, and stop_at_epsilon stops the run
    "fedpriv-train privacy.target_epsilon=1": (
        f"{TRAIN_CLI}::test_target_epsilon_is_met_and_stop_at_epsilon_stops",
        ('"privacy.target_epsilon=',),
    ),
    # adaptive clipping, 4 rounds on the debug preset (target quantile 0.5 is the default)
    "fedpriv-train privacy=user_dp_adaptive privacy.adaptive.target_quantile=0.5": (
        f"{TRAIN_CLI}::test_private_runs_write_one_ledger_line_per_round",
        ('"user_dp_adaptive"', 'f"privacy={privacy}"'),
    ),
    # the same overrides composed and trained in-process, then audited
    "fedpriv-train availability=bernoulli availability.dropout=0.3 sampling=poisson": (
        "tests/fl/test_edge.py::test_poisson_dropout_divides_by_the_expected_cohort_and_passes_the_audit",
        ('"availability=bernoulli"', '"availability.dropout=0.3"', '"sampling=poisson"'),
    ),
    # 6 rounds at a target of 6 that stop once epsilon 4 is spent
    "fedpriv-train privacy.stop_at_epsilon=2": (
        f"{TRAIN_CLI}::test_target_epsilon_is_met_and_stop_at_epsilon_stops",
        ('"privacy.stop_at_epsilon=',),
    ),
    # the documented commands themselves, 2 rounds of the logistic model over 100 clients
    "fedpriv-train privacy=example_dp privacy.example_sampling_rate=0.5 client.batch_size=2 "
    "sampling=fixed sampling.cohort_size=50": (
        f"{TRAIN_CLI}::test_readme_privacy_commands",
        (
            '"privacy=example_dp privacy.example_sampling_rate=0.5 client.batch_size=2 "',
            '"sampling=fixed sampling.cohort_size=50"',
        ),
    ),
    "fedpriv-train privacy.noise_source=secure privacy.release=strict": (
        f"{TRAIN_CLI}::test_readme_privacy_commands",
        ('"privacy.noise_source=secure privacy.release=strict"',),
    ),
    # the fast path at 20 bits on the debug preset, against plain aggregation
    "fedpriv-train secagg=fast secagg.bits=20": (
        "tests/privacy/test_secagg_cli.py::test_fast_path_with_20_bits_matches_plain_aggregation",
        ('"secagg=fast", "secagg.bits=20"',),
    ),
    # from a local mirror (file://) instead of the public one: the tests have no network
    "fedpriv-data download mnist --root data/mnist": (
        "tests/cli/test_data_cli.py::test_download_mnist_from_file_url",
        ('"download", "mnist", "--root"', "--source"),
    ),
    # the guide's own test runs its commands as shown, in a fresh work directory
    "fedpriv-train experiment=debug privacy=user_dp_laplace hydra.run.dir=runs/laplace": (
        LAPLACE,
        ('"fedpriv-train experiment=debug privacy=user_dp_laplace hydra.run.dir=runs/laplace"',),
    ),
    "fedpriv-audit runs/laplace": (LAPLACE, ('"fedpriv-audit runs/laplace"',)),
    # `mkdocs serve` renders the site `mkdocs build` writes
    "mkdocs serve": (DOCS_BUILD, ('"mkdocs", "build", "--strict"',)),
    "mkdocs build": (DOCS_BUILD, ('"mkdocs", "build", "--strict"',)),
    "mkdocs build --strict": (DOCS_BUILD, ('"mkdocs", "build", "--strict"',)),
}

#: ``make`` targets: what the Makefile's recipe must be, and what covers it. ``make test`` is
#: the suite itself, which CI runs through ``.ci/run``; ``make demo`` runs ``fedpriv-train``
#: with the default configuration, which is run here (shrunk) as that command.
MAKE_TARGETS: dict[str, tuple[str, str | None]] = {
    "make test": ("$(BIN)/python -m pytest", None),
    "make demo": ("$(BIN)/fedpriv-train", "fedpriv-train"),
}


# --- (a) commands run here ----------------------------------------------------------------------

#: Shrink rules for ``fedpriv-train``: each key's documented value is replaced (or the key
#: added), unless the documented value is already at most the one in KEEP_AT_MOST.
TRAIN_SHRINK = {
    "rounds": "1",
    "dataset.num_clients": "50",
    "eval_every": "1",
    "client.epochs": "1",
    "progress": "false",
}
KEEP_AT_MOST = {"rounds": 2, "dataset.num_clients": 100}
#: Added only where the command chooses none: the smallest model compiles fastest.
TRAIN_DEFAULTS = {"model": "logreg"}
#: Presets already sized for a smoke test keep their size.
SMALL_PRESETS = ("experiment=debug",)
#: ``fedpriv-data describe`` on the small fake files of SETUP: fewer clients than examples.
DESCRIBE_SHRINK = {"dataset.num_clients": "20"}
NATURAL_CLIENTS = ("femnist", "shakespeare", "emnist_tff")


def _write_trace(path: Path) -> None:
    rows = "".join(f"{i},0,1000\n" for i in range(50))
    path.write_text("client,available_from,available_to\n" + rows)


#: Fragment of a command -> what writes the files it reads: small fakes of the real formats
#: (the tests have no network and no data sets beyond scikit-learn's).
SETUP: dict[str, Callable[[Path], object]] = {
    "dataset.root=data/mnist": lambda w: fw.write_mnist(w / "data" / "mnist", 200, 20),
    "dataset.root=data/cifar10": lambda w: fw.write_cifar10(w / "data" / "cifar10", 100, 20),
    "dataset.root=leaf/data/femnist/data": lambda w: fw.write_femnist(
        w / "leaf" / "data" / "femnist" / "data"
    ),
    "availability.path=trace.csv": lambda w: _write_trace(w / "trace.csv"),
}


@functools.cache
def console_scripts() -> set[str]:
    from tests.docs.run_commands import entry_points

    return set(entry_points())


def _key(arg: str) -> str | None:
    if arg.startswith("-") or "=" not in arg:
        return None
    return arg.split("=", 1)[0].lstrip("+~")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _set(args: list[str], key: str, value: str) -> list[str]:
    kept = [a for a in args if _key(a) != key]
    return [*kept, f"{key}={value}"]


def shrink(command: str, index: int) -> list[str]:
    """The argv this module runs for a documented command (argv[0]: the console script)."""
    argv = shlex.split(command)
    prog, args = argv[0], argv[1:]
    if prog == "fedpriv-train":
        small = any(a in SMALL_PRESETS for a in args)
        for key, value in TRAIN_SHRINK.items():
            if small and key != "progress":
                continue
            got = next((a.split("=", 1)[1] for a in args if _key(a) == key), None)
            limit = KEEP_AT_MOST.get(key)
            if got is not None and limit is not None:
                num = _number(got)
                if num is not None and num <= limit:
                    continue
            args = _set(args, key, value)
        if not small:
            for key, value in TRAIN_DEFAULTS.items():
                if not any(_key(a) == key for a in args):
                    args.append(f"{key}={value}")
        multirun = "-m" in args or "--multirun" in args
        out_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        if not any(_key(a) == out_key for a in args):
            args.append(f"{out_key}=runs/command-{index}")
    elif prog == "fedpriv-data" and args[:1] == ["describe"]:
        if len(args) > 1 and args[1] not in NATURAL_CLIENTS:
            for key, value in DESCRIBE_SHRINK.items():
                args = _set(args, key, value)
    return [prog, *args]


def expectation(doc: Documented) -> tuple[int, str | None]:
    """(exit status, a line stderr must hold) from the output the documentation shows."""
    for line in doc.output:
        if line.startswith("fedpriv: error:"):
            return 2, line
    return 0, None


def run_here(command: str) -> str | None:
    """The command this module runs for a documented one (None: not run here)."""
    if command in COVERED_ELSEWHERE:
        return None
    if command in MAKE_TARGETS:
        return MAKE_TARGETS[command][1]
    prog = shlex.split(command)[0]
    return command if prog in console_scripts() else None


def _locations(cmd: str) -> str:
    return ", ".join(documented()[cmd].places)


COMMANDS = list(documented())
RUN_HERE = [c for c in COMMANDS if run_here(c) is not None]


def _cost(command: str) -> float:
    """A rough guess of a command's run time, to share the commands between workers."""
    if command.startswith("fedpriv-train"):
        return 4.0 if "model=cnn" in command else 1.0
    return 0.2


def _workers(commands: list[str], count: int) -> list[list[str]]:
    """Splits the commands into ``count`` lists of similar cost; the commands of one code
    block stay together and in order (``fedpriv-audit runs/canary`` reads what the command
    before it wrote)."""
    blocks: dict[str, list[str]] = {}
    for cmd in commands:
        blocks.setdefault(documented()[cmd].block, []).append(cmd)
    shares: list[list[str]] = [[] for _ in range(count)]
    load = [0.0] * count
    for block in sorted(blocks.values(), key=lambda b: -sum(_cost(c) for c in b)):
        i = load.index(min(load))
        shares[i].extend(block)
        load[i] += sum(_cost(c) for c in block)
    return [sorted(share, key=commands.index) for share in shares if share]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, dict]:
    """Runs every command of RUN_HERE, shrunk, in at most two processes (one per core, each
    running its commands one after another); returns the results by command."""
    work = tmp_path_factory.mktemp("commands")
    argv = {}
    for index, cmd in enumerate(RUN_HERE):
        target = run_here(cmd)
        for fragment, write in SETUP.items():
            if fragment in target:
                write(work)
        argv[cmd] = shrink(target, index)
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = []
    for n, share in enumerate(_workers(RUN_HERE, min(2, os.cpu_count() or 1))):
        spec = [{"id": cmd, "argv": argv[cmd], "cwd": str(work)} for cmd in share]
        (work / f"spec-{n}.json").write_text(json.dumps(spec, indent=1))
        log = open(work / f"worker-{n}.log", "w")  # noqa: SIM115 - closed below
        module = "tests.docs.run_commands"
        args = [sys.executable, "-m", module, str(work / f"spec-{n}.json"), str(work / f"{n}.json")]
        procs.append((n, log, subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log)))
    done: dict[str, dict] = {}
    for n, log, proc in procs:
        try:
            proc.wait(timeout=1200)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        results = work / f"{n}.json"
        if results.exists():
            done.update(json.loads(results.read_text()))
        tail = (work / f"worker-{n}.log").read_text()[-3000:]
        for job in json.loads((work / f"spec-{n}.json").read_text()):
            done.setdefault(
                job["id"],
                {"status": None, "stdout": "", "stderr": f"the worker died first:\n{tail}"},
            )
    for cmd in RUN_HERE:
        done[cmd]["argv"] = argv[cmd]
    return done


# --- the tests ----------------------------------------------------------------------------------


def test_the_documentation_shows_commands():
    assert len(COMMANDS) >= 30, COMMANDS
    readme = {
        c for c, d in documented().items() if any(p.startswith("README.md") for p in d.places)
    }
    assert {"make demo", "make test", "mkdocs serve", "mkdocs build"} <= readme


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_every_documented_command_is_run_by_a_test(command):
    covered = command in COVERED_ELSEWHERE or command in MAKE_TARGETS
    assert covered or run_here(command) is not None, (
        f"documented command not run by any test: {command!r} ({_locations(command)}); run it "
        "here (a console script: check its shrink rules) or add it to COVERED_ELSEWHERE with "
        "the test that runs it"
    )


@pytest.mark.parametrize("command", RUN_HERE, ids=RUN_HERE)
def test_documented_command_runs(ran, command):
    result = ran[command]
    status, line = expectation(documented()[command])
    shown = (
        f"{command!r} ({_locations(command)}) ran as {shlex.join(result['argv'])}: "
        f"exit status {result['status']}, expected {status}\n"
        f"stdout:\n{result['stdout'][-2000:]}\nstderr:\n{result['stderr'][-3000:]}"
    )
    assert result["status"] == status, shown
    if line is not None:
        assert line in [ln.strip() for ln in result["stderr"].splitlines()], shown
    if status == 0 and command.startswith("fedpriv-audit"):
        verdicts = [ln for ln in documented()[command].output if ln.startswith(("PASS:", "FAIL:"))]
        for verdict in verdicts:
            assert any(
                ln.startswith(verdict.split(":")[0] + ":") for ln in result["stdout"].splitlines()
            ), shown


def _function_source(ref: str) -> str:
    path, name = ref.split("::")
    tree = ast.parse((REPO / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            lines = (REPO / path).read_text().splitlines()
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            return "\n".join(lines[start - 1 : node.end_lineno])
    raise AssertionError(f"{ref}: no such test function")


@pytest.mark.parametrize("command", list(COVERED_ELSEWHERE), ids=list(COVERED_ELSEWHERE))
def test_command_is_run_by_the_named_test(command):
    ref, parts = COVERED_ELSEWHERE[command]
    assert ref.split("::")[1].startswith("test_"), ref
    source = _function_source(ref)
    missing = [p for p in parts if p not in source]
    assert not missing, f"{ref} does not run {command!r}: its source lacks {missing}"


@pytest.mark.parametrize(
    "command", [*COVERED_ELSEWHERE, *MAKE_TARGETS], ids=[*COVERED_ELSEWHERE, *MAKE_TARGETS]
)
def test_covered_commands_are_still_documented(command):
    assert command in documented(), (
        f"{command!r} is no longer in the documentation: remove it from this module's tables"
    )


def _make_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(rf"^{target}\s*:", ln))
    recipe = []
    for ln in lines[start + 1 :]:
        if not ln.startswith("\t"):
            break
        recipe.append(ln.strip())
    return recipe


@pytest.mark.parametrize("command", list(MAKE_TARGETS), ids=list(MAKE_TARGETS))
def test_make_targets_run_what_the_documentation_says(command):
    expected, _ = MAKE_TARGETS[command]
    recipe = _make_recipe(command.split()[1])
    assert any(ln == expected or ln.startswith(expected + " ") for ln in recipe), recipe
    if command == "make demo":
        assert recipe == ["$(BIN)/fedpriv-train"], "make demo: the default run, no overrides"
    if command == "make test":
        # CI is `make test` on a clean checkout: this suite, so the command tests itself.
        ci = (REPO / ".ci" / "run").read_text().splitlines()
        assert "make test" in [ln.strip() for ln in ci], ci
