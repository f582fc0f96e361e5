"""What the empirical audit can refute, and the warnings about what a run directory discloses."""

import itertools
import json
import math

import numpy as np
import pytest
import scipy.stats
import yaml

from fedpriv.audit import audit_run, read_run
from fedpriv.audit._render import html_report, markdown_report, text_report
from fedpriv.audit.consistency import audited_epsilon
from fedpriv.audit.disclosure import (
    diagnostic_keys,
    diagnostics_warning,
    disclosure_warnings,
    noise_source_warning,
)
from fedpriv.audit.empirical import (
    MAX_CANARIES,
    canaries_needed,
    membership_lower_bound,
    refutable_epsilon,
)
from tests.audit import runs


def beta_reach(num_inserted, num_unseen, delta, confidence):
    """The largest bound of a perfect membership test on the bounding half, written out with
    scipy's beta quantiles: Clopper-Pearson ``Beta.ppf(alpha; k, n - k + 1)`` (lower) and
    ``Beta.ppf(1 - alpha; k + 1, n - k)`` (upper) at ``k = n`` and ``k = 0``."""
    n1, n0 = num_inserted // 2, num_unseen // 2
    if num_inserted < 2 or num_unseen < 2:
        return 0.0
    alpha = (1 - confidence) / 2
    beta = scipy.stats.beta
    best = 0.0
    for hits, misses in ((n1, n0), (n0, n1)):
        low = beta.ppf(alpha, hits, 1)  # all `hits` of them right
        high = beta.ppf(1 - alpha, 1, misses)  # none of the others wrong
        if low > delta:
            best = max(best, math.log((low - delta) / high))
    return best


def separated(num_inserted, num_unseen):
    """Cosines a perfect membership test separates: every inserted above every unseen."""
    return np.linspace(0.1, 0.9, num_inserted), np.linspace(-0.9, -0.1, num_unseen)


# --- the refutable maximum ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,u", [(300, 300), (301, 300), (300, 100), (40, 200), (7, 5), (1000, 1000), (2, 2)]
)
@pytest.mark.parametrize("delta,confidence", [(1e-4, 0.95), (1e-5, 0.99), (1e-3, 0.8)])
def test_refutable_epsilon_matches_beta_quantiles(k, u, delta, confidence):
    expected = beta_reach(k, u, delta, confidence)
    assert refutable_epsilon(k, u, delta, confidence) == pytest.approx(
        expected, rel=1e-9, abs=1e-12
    )
    if k == u and k >= 4:  # equal halves: the closed form alpha^(1/m)
        a, m = (1 - confidence) / 2, k // 2
        closed = math.log((a ** (1 / m) - delta) / (1 - a ** (1 / m)))
        assert refutable_epsilon(k, u, delta, confidence) == pytest.approx(max(closed, 0.0))


def test_the_readme_run_cannot_refute_above_3_69():
    # 300 + 300 canaries at confidence 0.95: ln(0.9757 / 0.0243).
    assert refutable_epsilon(300, 300, 1e-4) == pytest.approx(math.log(0.9757 / 0.0243), abs=5e-3)
    assert 3.68 < refutable_epsilon(300, 300, 1e-4) < 3.70
    assert refutable_epsilon(1, 300, 1e-4) == refutable_epsilon(300, 0, 1e-4) == 0.0


@pytest.mark.parametrize(
    "k,u", [(300, 300), (301, 300), (300, 100), (40, 200), (7, 5), (1000, 1000), (2, 2)]
)
@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_perfectly_separated_canaries_reach_the_maximum(k, u, confidence):
    inserted, unseen = separated(k, u)
    bound = membership_lower_bound(inserted, unseen, 1e-4, confidence)
    assert bound.epsilon == pytest.approx(refutable_epsilon(k, u, 1e-4, confidence), rel=1e-12)


def test_no_arrangement_of_canaries_exceeds_the_maximum():
    # Every ordering of 4 inserted and 4 unseen canaries, split into the halves the bound
    # uses (even positions choose the threshold, odd positions bound): 8! / (2!)^4 = 2520.
    delta, confidence = 1e-3, 0.3  # a low confidence, so that 2 + 2 canaries bound anything
    top = refutable_epsilon(4, 4, delta, confidence)
    assert top > 0.3
    values = np.linspace(-0.8, 0.8, 8)
    seen = []
    for sel_ins in itertools.combinations(range(8), 2):
        rest = [i for i in range(8) if i not in sel_ins]
        for bnd_ins in itertools.combinations(rest, 2):
            rest2 = [i for i in rest if i not in bnd_ins]
            for sel_uns in itertools.combinations(rest2, 2):
                bnd_uns = [i for i in rest2 if i not in sel_uns]
                ins = np.empty(4)
                uns = np.empty(4)
                ins[0::2], ins[1::2] = values[list(sel_ins)], values[list(bnd_ins)]
                uns[0::2], uns[1::2] = values[list(sel_uns)], values[list(bnd_uns)]
                seen.append(membership_lower_bound(ins, uns, delta, confidence).epsilon)
    assert len(seen) == 2520
    assert max(seen) <= top * (1 + 1e-12)
    assert max(seen) == pytest.approx(top, rel=1e-12)  # and it is reached


@pytest.mark.parametrize("seed", range(4))
def test_random_canaries_never_exceed_the_maximum(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        k, u = int(rng.integers(2, 120)), int(rng.integers(2, 120))
        shift = rng.choice([0.0, 1.0, 3.0, 10.0, 100.0])
        inserted = rng.standard_t(3, k) + shift
        unseen = rng.standard_t(3, u)
        ties = rng.random() < 0.3
        if ties:
            inserted, unseen = np.round(inserted), np.round(unseen)
        bound = membership_lower_bound(inserted, unseen, 1e-5, 0.95).epsilon
        assert bound <= refutable_epsilon(k, u, 1e-5, 0.95) * (1 + 1e-12), (k, u, shift)


# --- the canaries a claim needs -----------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 0.5, 1.0, 2.53, 2.79, 3.69, 5.77, 8.0])
@pytest.mark.parametrize("delta,confidence", [(1e-4, 0.95), (1e-6, 0.99), (1e-2, 0.9)])
def test_canaries_needed_is_minimal(epsilon, delta, confidence):
    count = canaries_needed(epsilon, delta, confidence)
    assert count is not None and count >= 2
    # Independent of the module: the beta quantiles written out above.
    assert beta_reach(count, count, delta, confidence) > epsilon
    assert beta_reach(count - 1, count - 1, delta, confidence) <= epsilon
    assert beta_reach(count - 2, count - 2, delta, confidence) <= epsilon
    # And through the bound itself, on perfectly separated canaries.
    if count <= 20_000:
        ins, uns = separated(count, count)
        assert membership_lower_bound(ins, uns, delta, confidence).epsilon > epsilon
        ins, uns = separated(count - 1, count - 1)
        assert membership_lower_bound(ins, uns, delta, confidence).epsilon <= epsilon


def test_canaries_needed_grows_like_e_to_the_epsilon_and_has_limits():
    ratios = [canaries_needed(e + 1, 1e-5) / canaries_needed(e, 1e-5) for e in (6.0, 8.0, 10.0)]
    assert ratios == pytest.approx([math.e] * 3, rel=0.01)
    # The audit guide's run (docs/guides/audit.md): 300 canaries refute up to 3.69, so 300
    # is what 3.69 needs.
    assert canaries_needed(3.69, 1e-4) == 300
    assert canaries_needed(math.inf, 1e-5) is None
    assert canaries_needed(40.0, 1e-5) is None  # beyond MAX_CANARIES
    assert canaries_needed(18.0, 1e-5) <= MAX_CANARIES
    with pytest.raises(ValueError, match="epsilon"):
        canaries_needed(-1.0, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        canaries_needed(1.0, 0.0)


# --- the audit of a run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A hand-built honest ledger (10 Poisson rounds, q = 0.1, z = 1): claimed (RDP) epsilon
    3.44 at delta 1e-5, tightest recomputation (PLD) 2.85."""
    root = tmp_path_factory.mktemp("power")
    records = runs.poisson_records(10, q=0.1, z=1.0, population=1000)
    return runs.synthetic_run(root / "base", records, delta=1e-5)


@pytest.fixture(scope="module")
def base_tested(base_run):
    """The epsilon the empirical check of the base run tests: the tightest recomputation."""
    return audited_epsilon(audit_run(base_run).accounting)


def _with_canaries(base, dst, inserted, unseen, summary=None):
    run_dir = runs.copy_run(base, dst)
    record = {
        "format": 1,
        "count": len(inserted),
        "unseen": len(unseen),
        "inserted_cosines": [float(x) for x in inserted],
        "unseen_cosines": [float(x) for x in unseen],
    }
    (run_dir / "canaries.json").write_text(json.dumps(record))
    if summary:
        path = run_dir / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **summary}))
    return run_dir


def _empirical(report):
    return next(c for c in report.checks if c.name == "empirical")


SHAREABLE = {"noise_source": "secure", "release": "strict"}


def test_a_claim_above_what_the_canaries_can_refute_is_inconclusive(base_run, tmp_path):
    ins, uns = separated(40, 40)  # a perfect test, and still only up to 1.6
    report = audit_run(_with_canaries(base_run, tmp_path / "few", ins, uns))
    tested = audited_epsilon(report.accounting)
    top = refutable_epsilon(40, 40, 1e-5)
    assert top < 2.0 < tested < report.accounting.claimed_epsilon
    check = _empirical(report)
    assert check.status == "n/a" and check.detail.startswith("inconclusive")
    assert check.evidence["can_refute"] is False
    assert check.evidence["refutable_epsilon"] == pytest.approx(top)
    needed = canaries_needed(tested, 1e-5)
    assert check.evidence["canaries_needed"] == needed
    assert f"canaries.count={needed}" in check.detail
    # The verdict still passes (no check failed) but says the canaries could not decide.
    assert report.verdict == "PASS" and report.exit_status == 0
    assert "could not have refuted" in report.verdict_line
    assert any("could not have refuted" in w for w in report.warnings)
    saved = report.to_dict()
    json.dumps(saved, allow_nan=False)
    assert saved["empirical"]["can_refute"] is False
    assert saved["empirical"]["canaries_needed"] == needed
    assert saved["empirical"]["refutable_epsilon"] == pytest.approx(top)
    for text in (text_report(report), markdown_report(report, None), html_report(report, None)):
        assert f"can refute claims up to epsilon {top:.4g}" in text
        assert f"canaries.count={needed}" in text


def test_the_count_canaries_needed_gives_is_what_refutes(base_run, base_tested, tmp_path):
    tested = base_tested
    assert tested == pytest.approx(2.8545, rel=1e-3)  # PLD of the base ledger
    needed = canaries_needed(tested, 1e-5)
    # With the needed count, a perfect test refutes the claim: the mechanism "leaks" fully.
    ins, uns = separated(needed, needed)
    report = audit_run(_with_canaries(base_run, tmp_path / "enough", ins, uns))
    assert audited_epsilon(report.accounting) == tested
    check = _empirical(report)
    assert check.status == "fail" and check.evidence["can_refute"] is True
    assert report.exit_status == 1
    # Two fewer (the next count with a smaller bounding half) cannot, whatever the cosines.
    ins, uns = separated(needed - 2, needed - 2)
    report = audit_run(_with_canaries(base_run, tmp_path / "short", ins, uns))
    assert _empirical(report).status == "n/a" and report.exit_status == 0


def test_a_refutable_claim_passes_and_states_the_reach(base_run, tmp_path):
    rng = np.random.default_rng(0)
    ins, uns = rng.normal(0.0, 0.01, 300), rng.normal(0.0, 0.01, 300)  # no signal
    report = audit_run(_with_canaries(base_run, tmp_path / "honest", ins, uns, summary=SHAREABLE))
    check = _empirical(report)
    assert check.status == "pass" and check.evidence["can_refute"] is True
    assert "can refute epsilon up to 3.69" in check.detail
    assert "could not have refuted" not in report.verdict_line
    assert report.warnings == ()  # nothing to warn about: secure, strict, estimate below
    assert "can refute claims up to epsilon 3.69" in text_report(report)


def test_an_estimate_above_the_claim_warns_without_failing(base_run, tmp_path):
    rng = np.random.default_rng(1)
    # Gaussians 2 standard deviations apart: an estimate far above the claim of 3.44, and a
    # lower bound (about 1.7 with these seeds) that 300 canaries keep below the tested 2.85.
    ins, uns = rng.normal(0.02, 0.01, 300), rng.normal(0.0, 0.01, 300)
    report = audit_run(_with_canaries(base_run, tmp_path / "leaky", ins, uns, summary=SHAREABLE))
    assert report.empirical["epsilon_estimate"] > 2 * report.accounting.claimed_epsilon
    assert _empirical(report).status == "pass"
    assert report.verdict == "PASS" and report.exit_status == 0
    assert len(report.warnings) == 1
    warned = report.warnings[0]
    assert "estimate" in warned and "exceeds the claimed epsilon 3.442" in warned
    assert "not a bound" in warned
    assert f"- {warned}" in markdown_report(report, None)
    assert f"warning: {warned}" in text_report(report)
    assert report.to_dict()["warnings"] == [warned]


# --- what the run directory discloses ------------------------------------------------------------


def _edit(run_dir, summary=None, config=None, metrics=None):
    """Merges ``summary`` into summary.json, writes ``config`` as .hydra/config.yaml and maps
    every metrics line through ``metrics``."""
    if summary is not None:
        path = run_dir / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **summary}))
    if config is not None:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        path = run_dir / "metrics.jsonl"
        runs.write_lines(path, [metrics(row) for row in runs.lines(path)])
    return read_run(run_dir)


@pytest.fixture
def run_copy(base_run, tmp_path):
    return runs.copy_run(base_run, tmp_path / "r")


def test_seeded_noise_warns_and_secure_noise_does_not(run_copy):
    # Without the field the run is seeded.
    warning = noise_source_warning(read_run(run_copy))
    assert warning.startswith("the guarantee holds only while the seed stays secret")
    assert ".hydra/config.yaml" in warning and "privacy.noise_source=secure" in warning
    assert "does not record" in warning
    assert "noise_source=seeded" in noise_source_warning(
        _edit(run_copy, summary={"noise_source": "seeded"})
    )
    assert noise_source_warning(_edit(run_copy, summary={"noise_source": "secure"})) is None
    both = _edit(run_copy, config={"privacy": {"name": "user_dp", "noise_source": "secure"}})
    assert noise_source_warning(both) is None


@pytest.mark.parametrize(
    "summary_source,config_source", [("seeded", "secure"), ("secure", "seeded"), ("quantum", None)]
)
def test_conflicting_or_unknown_noise_sources_count_as_seeded(
    run_copy, summary_source, config_source
):
    config = {"privacy": {"name": "user_dp", "noise_source": config_source}}
    run = _edit(run_copy, summary={"noise_source": summary_source}, config=config)
    warning = noise_source_warning(run)
    assert warning is not None and repr(summary_source) in warning


def test_diagnostics_warn_with_their_keys(run_copy):
    def nest(row):
        return {**row, "diagnostics": {"train_loss": 0.7, "clipped_fraction": 0.5}}

    run = _edit(
        run_copy,
        summary={"release": "diagnostics", "diagnostics": {"train_loss": 0.6, "preclip_norm": 2}},
        metrics=nest,
    )
    assert diagnostic_keys(run) == {
        "metrics.jsonl": ["clipped_fraction", "train_loss"],
        "summary.json": ["preclip_norm", "train_loss"],
    }
    warning = diagnostics_warning(run)
    assert warning.startswith("this run directory holds diagnostics the epsilon does not cover")
    assert "metrics.jsonl: clipped_fraction, train_loss" in warning
    assert "summary.json: preclip_norm, train_loss" in warning
    assert "privacy.release=strict" in warning and "although" not in warning


def test_strict_runs_have_no_diagnostics_warning(run_copy):
    # The hand-built run's metrics carry only the round's released numbers and `clients`.
    run = _edit(run_copy, summary={"release": "strict"})
    assert diagnostics_warning(run) is None
    # A run marked strict that still holds diagnostics is flagged, and says so.
    run = _edit(run_copy, metrics=lambda row: {**row, "diagnostics": {"train_loss": 1.0}})
    assert "although the run records privacy.release=strict" in diagnostics_warning(run)


def test_runs_from_before_the_release_field_hold_top_level_diagnostics(run_copy):
    run = _edit(
        run_copy,
        summary={"train_loss": 0.5},
        metrics=lambda row: {**row, "train_loss": 0.5, "clipped_fraction": 0.25},
    )
    assert diagnostic_keys(run) == {
        "metrics.jsonl": ["clients", "clipped_fraction", "train_loss"],
        "summary.json": ["train_loss"],
    }
    # The same keys at the top level of a run that records its release are not diagnostics.
    run = _edit(run_copy, summary={"release": "strict"})
    assert diagnostic_keys(run) == {}


def test_metrics_are_read_as_written(run_copy):
    # The warning reads metrics.jsonl itself, so a reader that drops unknown keys from the
    # parsed rows does not hide the diagnostics.
    run = _edit(
        run_copy,
        summary={"release": "diagnostics"},
        metrics=lambda row: {**row, "diagnostics": {"train_loss": 1.0}},
    )
    stripped = type(run)(
        run.path,
        run.config,
        run.ledger,
        run.events,
        [{k: v for k, v in r.items() if k != "diagnostics"} for r in run.metrics],
        run.summary,
    )
    assert diagnostic_keys(stripped)["metrics.jsonl"] == ["train_loss"]


def test_warnings_are_reported_everywhere_and_change_no_exit_status(run_copy, tmp_path):
    quiet = audit_run(runs.copy_run(_edit(run_copy, summary=SHAREABLE).path, tmp_path / "quiet"))
    assert quiet.warnings == () and quiet.exit_status == 0
    _edit(
        run_copy,
        summary={"noise_source": "seeded", "release": "diagnostics"},
        metrics=lambda row: {**row, "diagnostics": {"train_loss": 0.5}},
    )
    report = audit_run(run_copy)
    assert len(report.warnings) == 2 and report.warnings == tuple(
        disclosure_warnings(read_run(run_copy))
    )
    assert report.verdict == quiet.verdict == "PASS" and report.exit_status == 0
    assert report.to_dict()["warnings"] == list(report.warnings)
    text, md, page = text_report(report), markdown_report(report, None), html_report(report, None)
    for w in report.warnings:
        assert f"warning: {w}" in text and f"- {w}" in md
        assert w.replace("'", "&#x27;") in page
    assert "## Warnings" in md and "<h2>Warnings</h2>" in page
    assert "## Warnings" not in markdown_report(quiet, None)


def test_a_run_without_privacy_has_no_warnings(tmp_path):
    run_dir = tmp_path / "plain"
    run_dir.mkdir()
    runs.write_lines(run_dir / "metrics.jsonl", [{"round": 1, "train_loss": 0.5}])
    (run_dir / "summary.json").write_text(json.dumps({"rounds": 1}))
    report = audit_run(run_dir)
    assert report.verdict == "NO DP" and report.warnings == ()
    assert report.to_dict()["warnings"] == []
