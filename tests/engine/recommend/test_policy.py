"""The race policy as a pure function: hand-made validation curves in, decisions out."""
import math

import pytest

from engine.recommend.policy import Arm, CellView, EpochPoint, Job, RaceSettings, decide, replay, rung_epochs

HEAD, FULL = 10, 1000  # trainable parameter counts of a head-only and a full epoch


def view(values, switch=None, done=None) -> CellView:
    """A cell's curve; a head-first cell trains the head alone before epoch `switch`."""
    points = tuple(EpochPoint(v, HEAD if switch is not None and e < switch else FULL) for e, v in enumerate(values))
    return CellView(points, done=done if done is not None else False)


def run(arms, curves, seeds, epochs, settings):
    """Drives `decide` to the end, revealing each cell's hand-made curve as far as the jobs ask.

    Returns (final decision, epochs trained per cell)."""
    trained = {}
    while True:
        seen = {}
        for key, n in trained.items():
            values, switch = curves[key]
            seen[key] = view(values[:n], switch, done=len(values) <= n)
        decision = decide(arms, seeds, epochs, settings, seen)
        if not decision.jobs:
            return decision, trained
        assert len({j.until_epoch for j in decision.jobs}) == 1  # one rung at a time
        for job in decision.jobs:
            assert trained.get((job.arm, job.seed), 0) < job.until_epoch  # never asks for what it has
            trained[(job.arm, job.seed)] = job.until_epoch


def test_rungs_are_geometric_below_the_budget_or_as_given():
    assert rung_epochs(RaceSettings(eta=2), 8) == [2, 4, 8]
    assert rung_epochs(RaceSettings(eta=3), 30) == [3, 10, 30]
    assert rung_epochs(RaceSettings(eta=2, min_rung=3), 8) == [4, 8]
    assert rung_epochs(RaceSettings(rungs=[1, 5, 20]), 8) == [1, 5, 8]


@pytest.mark.parametrize("field, value", [("eta", 1), ("phase_epochs", 0), ("finalists", 0), ("min_rung", 0),
                                          ("seed_margin", -0.1), ("rungs", [4, 2])])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"recommend.{field}"):
        RaceSettings(**{field: value})


def test_first_call_starts_every_arm_on_the_first_seed_to_the_first_rung():
    arms = [Arm("a"), Arm("b"), Arm("c")]
    decision = decide(arms, [7, 8], 8, RaceSettings(eta=2), {})
    assert decision.jobs == [Job(a.name, 7, 2) for a in arms]
    assert not decision.finished


def test_successive_halving_keeps_the_top_half_by_best_value_so_far():
    arms = [Arm(n) for n in "abcd"]
    # best-so-far at rung 2: a 0.5, b 0.9 (a peak, then a dip), c 0.7, d 0.6
    curves = {("a", 1): [0.4, 0.5, 0.5, 0.5], ("b", 1): [0.9, 0.3, 0.6, 0.6],
              ("c", 1): [0.6, 0.7, 0.9, 0.9], ("d", 1): [0.6, 0.5, 0.5, 0.5]}
    seen = {k: view(v[:2]) for k, v in curves.items()}
    decision = decide(arms, [1], 4, RaceSettings(eta=2), seen)
    ranked = sorted("abcd", key=lambda n: -max(curves[(n, 1)][:2]))
    assert {j.arm for j in decision.jobs} == set(ranked[:2]) and {j.until_epoch for j in decision.jobs} == {4}
    assert {n: (s.rung, s.value) for n, s in decision.stops.items()} == {
        n: (2, max(curves[(n, 1)][:2])) for n in ranked[2:]}


def test_late_switching_lp_ft_survives_its_linear_probe_and_wins():
    """LP-FT probes until epoch 5 (worse than everyone) and is the best arm once it fine-tunes."""
    arms = [Arm("ft"), Arm("lp"), Arm("sp"), Arm("lp_ft", head_first=True)]
    curves = {("ft", 1): ([0.60, 0.65, 0.70, 0.72, 0.73, 0.74, 0.74, 0.75], None),
              ("lp", 1): ([0.50, 0.55, 0.58, 0.60, 0.61, 0.61, 0.62, 0.62], None),
              ("sp", 1): ([0.58, 0.66, 0.69, 0.71, 0.72, 0.72, 0.73, 0.73], None),
              ("lp_ft", 1): ([0.40, 0.45, 0.48, 0.50, 0.51, 0.80, 0.85, 0.86], 5)}
    settings = RaceSettings(eta=2, phase_epochs=2, finalists=1)
    decision, trained = run(arms, curves, [1], 8, settings)
    assert decision.recommendation == "lp_ft"
    assert decision.carried == {2: ["lp_ft"], 4: ["lp_ft"]}
    assert trained[("lp_ft", 1)] == 8

    blind, _ = run(arms, curves, [1], 8, RaceSettings(eta=2, phase_epochs=2, finalists=1, phase_aware=False))
    assert blind.stops["lp_ft"].rung == 2 and blind.recommendation == "ft"


def test_replay_of_recorded_cells_decides_as_the_step_by_step_race():
    arms = [Arm("ft"), Arm("lp"), Arm("sp"), Arm("lp_ft", head_first=True)]
    values = {"ft": [0.6, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8], "lp": [0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
              "sp": [0.6, 0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9], "lp_ft": [0.3, 0.4, 0.4, 0.5, 0.8, 0.8, 0.9, 0.9]}
    curves = {(a, s): ([v - 0.01 * s for v in vals], 4 if a == "lp_ft" else None)
              for a, vals in values.items() for s in (1, 2)}
    curves[("lp", 1)] = ([0.5, 0.55, 0.55], None)  # stopped early by its patience
    settings = RaceSettings(eta=2, phase_epochs=2, seed_margin=0.5)
    stepwise, trained = run(arms, curves, [1, 2], 8, settings)
    recorded = {k: view(v, s, done=True) for k, (v, s) in curves.items()}
    decision, seen = replay(arms, [1, 2], 8, settings, recorded)
    assert (decision.recommendation, decision.stops, decision.carried) == (
        stepwise.recommendation, stepwise.stops, stepwise.carried)
    assert {k: len(v.points) for k, v in seen.items()} == {k: min(n, len(curves[k][0])) for k, n in trained.items()}
    # and deciding on the whole record at once gives the same answer: nothing after a rung leaks into it
    whole = decide(arms, [1, 2], 8, settings, recorded)
    assert (whole.recommendation, whole.stops, whole.jobs) == (stepwise.recommendation, stepwise.stops, [])


def test_replay_names_a_cell_the_race_needs_further():
    with pytest.raises(ValueError, match="cell a seed 1 has 1 epochs"):
        replay([Arm("a"), Arm("b")], [1], 4, RaceSettings(), {("a", 1): view([0.5]), ("b", 1): view([0.5])})


def test_head_first_arm_is_judged_once_it_trained_the_backbone_for_phase_epochs():
    arms = [Arm("ft"), Arm("g", head_first=True), Arm("x")]
    # g unfreezes at epoch 1, so by rung 4 it trained the backbone for 3 epochs: judged (and last)
    seen = {("ft", 1): view([0.6, 0.7, 0.7, 0.8]), ("x", 1): view([0.5, 0.6, 0.6, 0.7]),
            ("g", 1): view([0.1, 0.2, 0.3, 0.4], switch=1)}
    decision = decide(arms, [1], 8, RaceSettings(rungs=[4], phase_epochs=3), seen)
    assert 4 not in decision.carried and decision.stops["g"].rung == 4
    strict = decide(arms, [1], 8, RaceSettings(rungs=[4], phase_epochs=4), seen)
    assert strict.carried == {4: ["g"]} and "g" not in strict.stops


def test_an_early_stopped_cell_does_not_hold_up_its_rung_and_counts_its_best():
    arms = [Arm("a"), Arm("b")]
    seen = {("a", 1): view([0.9, 0.8], done=True), ("b", 1): view([0.5, 0.6, 0.7, 0.7])}
    decision = decide(arms, [1], 8, RaceSettings(rungs=[4]), seen)
    assert decision.stops == {"b": decision.stops["b"]} and decision.stops["b"].value == 0.7
    assert decision.jobs == []  # a is done, so the last rung is complete too
    assert decision.recommendation == "a"


def test_further_seeds_go_to_the_finalists_in_contention_only():
    arms = [Arm("a"), Arm("b"), Arm("c")]
    settings = RaceSettings(rungs=[], min_rung=9, finalists=3, seed_margin=0.05)
    last = {("a", 1): 0.80, ("b", 1): 0.78, ("c", 1): 0.60, ("a", 2): 0.70, ("b", 2): 0.80,
            ("a", 3): 0.75, ("b", 3): 0.76}
    curves = {k: ([v], None) for k, v in last.items()}
    decision, trained = run(arms, curves, [1, 2, 3], 1, settings)
    assert set(trained) == set(last)  # c, 0.2 behind, never got a second seed
    mean = {n: sum(last[(n, s)] for s in (1, 2, 3)) / 3 for n in "ab"}
    assert decision.recommendation == max(mean, key=mean.get)
    assert decision.scores == pytest.approx(mean)
    assert decision.stops["c"].seeds == 1 and decision.stops["c"].value == 0.60


def test_a_clear_leader_after_the_first_seed_spends_no_other_seed():
    arms = [Arm("a"), Arm("b")]
    seen = {("a", 1): view([0.9], done=True), ("b", 1): view([0.7], done=True)}
    decision = decide(arms, [1, 2, 3], 1, RaceSettings(min_rung=9, seed_margin=0.1), seen)
    assert decision.jobs == [] and decision.recommendation == "a"
    assert decision.stops["b"].seeds == 1


def test_a_cell_with_no_epochs_is_worst():
    arms = [Arm("a"), Arm("b")]
    seen = {("a", 1): CellView((), done=True), ("b", 1): view([0.2], done=True)}
    decision = decide(arms, [1], 1, RaceSettings(min_rung=9), seen)
    assert decision.recommendation == "b" and decision.stops["a"].value == -math.inf
