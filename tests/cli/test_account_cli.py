"""fedpriv-account: JSON output matches the library; bad values exit 2 with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv.accounting import (
    calibrate_noise,
    default_delta,
    epsilon,
    fixed_cohort_events,
    poisson_events,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


def account(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.account", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_json_epsilon_matches_the_api_for_every_accountant():
    res = account(
        "--noise-multiplier",
        "1.1",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert list(out) == ["rdp", "pld", "prv", "opacus_rdp"]
    events = poisson_events(0.01, 1.1, 1000)
    for name, value in out.items():
        assert value == pytest.approx(epsilon(events, 1e-5, name), rel=1e-12)


def test_json_fixed_cohorts_use_rdp_and_default_delta():
    res = account(
        "--noise-multiplier",
        "2",
        "--population",
        "1000",
        "--cohort",
        "100",
        "--rounds",
        "20",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["rdp"]  # the only accountant for sampling without replacement
    expected = epsilon(fixed_cohort_events(1000, 100, 2.0, 20), default_delta(1000), "rdp")
    assert out["rdp"] == pytest.approx(expected, rel=1e-12)


def test_json_calibration_matches_the_api():
    res = account(
        "--target-epsilon",
        "2",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "1000",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    expected = calibrate_noise(2.0, 1e-5, 1000, sampling_rate=0.01, accountant="rdp")
    assert out == {"rdp": pytest.approx(expected, rel=1e-12)}


def test_human_table_and_single_accountant():
    res = account(
        "--noise-multiplier",
        "1.0",
        "--steps",
        "4",
        "--example-sampling-rate",
        "0.05",
        "--rounds",
        "10",
        "--delta",
        "1e-6",
        "--accountant",
        "rdp",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert "example" in lines[0]
    assert lines[1].split() == ["accountant", "epsilon"]
    name, value = lines[2].split()
    assert name == "rdp" and float(value) > 0
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--noise-multiplier", "1", "--sampling-rate", "0.1", "--delta", "1"], "--delta"),
        (["--noise-multiplier", "1", "--sampling-rate", "0.1", "--delta", "0"], "--delta"),
        (["--noise-multiplier", "1", "--sampling-rate", "0.1", "--delta=-1e-5"], "--delta"),
        (["--noise-multiplier", "1", "--sampling-rate", "0", "--delta", "1e-5"], "--sampling-rate"),
        (
            ["--noise-multiplier", "1", "--sampling-rate", "1.5", "--delta", "1e-5"],
            "--sampling-rate",
        ),
        (
            ["--target-epsilon", "0", "--sampling-rate", "0.1", "--delta", "1e-5"],
            "--target-epsilon",
        ),
        (
            [
                "--target-epsilon",
                "1e-6",
                "--sampling-rate",
                "0.1",
                "--delta",
                "1e-5",
                "--accountant",
                "rdp",
            ],
            "--target-epsilon",
        ),
        (
            [
                "--noise-multiplier",
                "1",
                "--sampling-rate",
                "0.1",
                "--delta",
                "1e-5",
                "--accountant",
                "moments",
            ],
            "--accountant",
        ),
        (
            [
                "--noise-multiplier",
                "1",
                "--population",
                "100",
                "--cohort",
                "10",
                "--accountant",
                "pld",
            ],
            "--accountant",
        ),
        (["--noise-multiplier", "1", "--sampling-rate", "0.1"], "--delta"),
        (["--noise-multiplier", "1", "--delta", "1e-5"], "--sampling-rate"),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_flag(args, flag):
    res = account(*args, "--rounds", "10")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert flag in lines[0]
    assert res.stdout == ""
