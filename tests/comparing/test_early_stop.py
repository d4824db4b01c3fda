"""The early-stopping rule: the rung, and who stops there."""

from msfusion_ray.app.early_stop import hopeless, rung_steps


def test_the_rung_is_half_the_steps_at_an_evaluated_step():
    assert rung_steps(20, 2) == 10 and rung_steps(20, 3) == 9 and rung_steps(160, 16) == 80
    assert rung_steps(4, 1) == 2 and rung_steps(3, 1) == 1
    assert rung_steps(1, 1) is None and rung_steps(4, 4) is None  # nothing to judge before the end


def test_runs_worse_than_their_schemes_median_stop():
    scheme_of = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C", "c2": "C", "c3": "C", "c4": "C"}
    scores = {"a1": 0.5, "a2": 0.7, "a3": 0.6, "b1": 0.1, "b2": 0.9, "c1": 0.3, "c2": 0.3, "c3": None, "c4": 0.2}
    # A: median 0.6, a1 below; B: two runs, none judged; C: c3 failed (no value), median of 0.3, 0.3, 0.2 is 0.3
    assert hopeless(scores, scheme_of, lower_is_better=False) == ["a1", "c4"]
    perplexities = {"a1": 9.0, "a2": 7.0, "a3": 8.0}
    assert hopeless(perplexities, {k: "A" for k in perplexities}, lower_is_better=True) == ["a1"]


def test_only_schemes_with_enough_runs_are_judged_at_the_rung():
    from msfusion_ray.app.early_stop import judged_schemes

    assert judged_schemes(["A", "A", "A", "B", "B", "C"]) == {"A"}
