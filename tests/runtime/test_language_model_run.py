"""configs/lm_smoke.yaml, shortened, on the shared Ray cluster: perplexities per round, tokens per participant,
and the tokenizer saved with the run."""

import json
import math
from pathlib import Path

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.data.tokenizer import CharTokenizer
from msfusion_ray.experiment.config_check import load_config
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "lm_smoke.yaml"


def test_lm_smoke_config_records_perplexities_and_tokens(ray_session, tmp_path):
    overrides = ["rounds=2", "training.local_steps=3", "data.train_samples=600", "data.eval_samples=64",
                 f"output_dir={tmp_path / 'runs'}", "runtime.hosts=2"]
    prepared = prepare(load_config(CONFIG, overrides))
    finished = run_prepared(prepared, show_progress=False)
    run_dir, summary = finished.run_dir, finished.summary
    assert summary["status"] == "complete"

    rounds = read_round_rows(run_dir)
    assert rounds["round"].tolist() == [1, 2]
    for column in ("val_perplexity", "test_perplexity"):
        assert all(1 < value < 1000 and math.isfinite(value) for value in rounds[column])
    participants = read_participant_rows(run_dir)
    trained = participants[participants["status"] == "ok"]
    assert len(trained) == 2 * 4
    context = prepared.data.shape.input_shape[0]
    assert (trained["tokens"] == trained["samples"] * context).all() and (trained["tokens"] > 0).all()
    assert (trained["flops"] > 0).all()

    tokenizer = CharTokenizer.from_json((run_dir / "tokenizer.json").read_text())
    assert tokenizer.vocab_size == prepared.data.shape.num_outputs
    assert len(json.loads((run_dir / "corpus.json").read_text())["train"]) == 30
