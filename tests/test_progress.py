"""The run's progress line: what it shows after each round."""

import math

from msfusion_ray.app.progress import round_postfix


def test_progress_line_shows_perplexity_for_a_language_model_and_accuracy_otherwise():
    lm = {"accuracy": 0.31, "perplexity": 5.123, "ok": 7, "oom": 1}
    assert round_postfix(lm) == {"ppl": "5.12", "ok": 7, "oom": 1}
    vision = {"accuracy": 0.8123, "perplexity": math.nan, "ok": 8, "oom": 0}
    assert round_postfix(vision) == {"acc": "0.812", "ok": 8, "oom": 0}


def test_progress_line_is_empty_in_a_round_without_evaluation():
    assert round_postfix({"accuracy": math.nan, "perplexity": math.nan, "ok": 8, "oom": 0}) == {}
    assert round_postfix({"round": 0, "status": "starting"}) == {}


def test_the_progress_line_shows_the_virtual_clock():
    assert round_postfix({"vt": 12.34, "accuracy": 0.5, "ok": 3, "oom": 0}) == {"vt": "12.3s", "acc": "0.500",
                                                                                 "ok": 3, "oom": 0}
    assert round_postfix({"vt": 2.0, "accuracy": math.nan}) == {"vt": "2.0s"}
