"""Text models: token ids and their cache, MiniLM, hf: text encoders, the from-scratch text transformer,
training on text through the one engine, and finetune on a text file."""

from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli_helpers import assert_one_line_error, run
from transferkit.data import DataSplits, TextDataset, load_dataset
from transferkit.data import tokens as tokens_mod
from transferkit.data.tokens import PAD, TokenDataset, model_inputs, tokenize, tokenizer_key
from transferkit.engine import TrainConfig, Trainer
from transferkit.engine.strategies import build_param_groups
from transferkit.errors import CheckpointError, DataError, ShapeError
from transferkit.models import ModelInfo, create_model, load_model, save_model
from transferkit.models.surgery import backbone_blocks
from transferkit.models.text import TokenAdapter
from transferkit.transfer import check_copied_function, transfer_parameters

WORDS = ["the", "a", "film", "movie", "plot", "actor", "was", "is", "really", "quite", "story", "ending"]
POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]


def _sentiment(n: int, seed: int, name: str) -> TextDataset:
    """Texts whose class is the polarity of one sentiment word among filler words."""
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        length = int(torch.randint(3, 12, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (length,), generator=g)]
        pool = POS if label else NEG
        words.insert(int(torch.randint(len(words) + 1, (1,), generator=g)), pool[int(torch.randint(4, (1,),
                                                                                                   generator=g))])
        texts.append(" ".join(words))
        labels.append(label)
    return TextDataset(texts, torch.tensor(labels), ["neg", "pos"], name)


def write_csv(path, texts, labels, header: tuple[str, str] = ("text", "label")) -> None:
    """A text file in the on-disk format users bring: a header ``text,label`` and one row each."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(header))
        w.writerows(zip(texts, labels, strict=True))


def _read_back(path) -> tuple[list[str], list[str]]:
    """The texts and labels of a file :func:`write_csv` wrote."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return [r[0] for r in rows], [r[1] for r in rows]


def _labels_of(data: TextDataset) -> list[str]:
    return [data.classes[int(y)] for y in data.y]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BERT with its own 30-word WordPiece vocabulary, saved as a local folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *POS, *NEG, "##s", "airline", "apple",
             "qzxjv"]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def minilm():
    return create_model("minilm", num_classes=2, pretrained=True)


# ----------------------------------------------------------------------------- token ids
def test_token_adapter_trims_each_batch_to_its_longest_text_and_masks_padding():
    adapter = TokenAdapter(max_length=16, pad_token_id=0)
    ids = torch.tensor([[101, 7, 8, 102, PAD, PAD, PAD], [101, 9, 102, PAD, PAD, PAD, PAD]])
    out = adapter(ids)
    assert out["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    with pytest.raises(ShapeError, match="int64 token ids"):
        adapter(torch.rand(2, 7))
    with pytest.raises(ShapeError, match="longer than the model's max_length 16"):
        adapter(torch.ones(1, 20, dtype=torch.long))


def test_tokenisation_happens_once_per_tokenizer_length_and_texts(minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    calls = []
    real = tokens_mod._encode
    monkeypatch.setattr(tokens_mod, "_encode", lambda *a: calls.append(1) or real(*a))
    data = _sentiment(20, 0, "s")
    first = tokenize(data, minilm.tokenizer, 32)
    assert isinstance(first, TokenDataset) and first.x.dtype == torch.long
    assert first.x.shape[1] == int(first.lengths().max())  # padded to the longest text only
    again = tokenize(TextDataset(list(data.texts), data.y, data.classes, "same texts"), minilm.tokenizer, 32)
    assert torch.equal(first.x, again.x) and len(calls) == 1  # memory
    tokens_mod._MEMORY.clear()
    assert torch.equal(tokenize(data, minilm.tokenizer, 32).x, first.x) and len(calls) == 1  # disk
    tokenize(data, minilm.tokenizer, 8)  # another length: tokenised again, truncated
    assert len(calls) == 2
    files = list((tmp_path / "tokens").glob("*.safetensors"))
    assert len(files) == 2
    files[0].write_bytes(b"not a safetensors file")
    tokens_mod._MEMORY.clear()
    assert tokenize(data, minilm.tokenizer, 32).x.shape[0] == 20  # a broken cache file is recomputed


def test_text_data_for_an_image_model_fails_in_one_line():
    model = create_model("mlp", num_classes=2, in_features=4)
    with pytest.raises(DataError, match="holds text but model 'mlp' takes no text; use a text model: minilm"):
        model_inputs(_sentiment(4, 0, "s"), model)


def test_ids_of_another_tokenizer_are_made_again_from_the_texts(minilm, tiny_bert):
    small = create_model(f"hf:{tiny_bert}", num_classes=2)
    data = _sentiment(10, 1, "s")
    for_minilm = model_inputs(data, minilm)
    for_small = model_inputs(for_minilm, small)
    assert for_small.tokenizer_key == tokenizer_key(small.tokenizer) != for_minilm.tokenizer_key
    assert int(for_small.x.max()) < len(small.tokenizer) < int(for_minilm.x.max())
    assert model_inputs(for_small, small) is for_small


# ----------------------------------------------------------------------------- MiniLM
def test_minilm_mean_pools_real_tokens_and_padding_changes_nothing(minilm):
    import transformers

    from transferkit.models.text import minilm_path

    texts = ["A man is eating food.", "A man is eating a piece of bread on a sunny afternoon in the park."]
    data = TextDataset(texts, torch.tensor([0, 1]), ["a", "b"], "pair")
    minilm.eval()
    with torch.no_grad():
        batch = minilm.forward_features(model_inputs(data, minilm).x)  # the short text is padded
        alone = minilm.forward_features(model_inputs(data.subset([0]), minilm).x)
        ref_model = transformers.AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
        enc = minilm.tokenizer(texts, padding=True, return_tensors="pt")
        hidden = ref_model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        reference = (hidden * m).sum(1) / m.sum(1)
    assert batch.shape == (2, 384)
    assert torch.allclose(batch, reference, atol=1e-5)
    assert torch.allclose(batch[:1], alone, atol=1e-5)


def test_minilm_embeds_paraphrases_closer_than_unrelated_sentences(minilm):
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse."]
    data = TextDataset(texts, torch.tensor([0, 1, 0, 1]), ["a", "b"], "sts")
    minilm.eval()
    with torch.no_grad():
        e = F.normalize(minilm.forward_features(model_inputs(data, minilm).x), dim=1)
    sim = e @ e.T
    assert sim[0, 1] > 0.6
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3]


def test_minilm_blocks_sizes_and_layerwise_rates(minilm):
    names = [n for n, _ in backbone_blocks(minilm)]
    assert names == ["backbone.model.embeddings", *(f"backbone.model.encoder.layer.{i}" for i in range(6))]
    assert minilm.info.feature_dim == 384 and minilm.info.input_size == (128,)
    assert minilm.info.text == {"tokenizer": "minilm", "pad_token_id": 0, "pooling": "mean"}
    backbone = sum(p.numel() for p in minilm.backbone.parameters())
    assert 22_700_000 < backbone < 22_800_000  # all-MiniLM-L6-v2: 22.7M
    groups = build_param_groups(minilm, TrainConfig(lr=1e-3, backbone_lr_scale=1.0, layer_decay=0.5))
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates["backbone.model.encoder.layer.5"] == pytest.approx(1e-3)
    assert rates["backbone.model.encoder.layer.4"] == pytest.approx(5e-4)
    assert rates["backbone.model.embeddings"] == pytest.approx(1e-3 * 0.5**6)


# ----------------------------------------------------------------------------- hf: and saving
def test_hf_text_folder_loads_model_and_tokenizer_and_round_trips(tiny_bert, tmp_path):
    model = create_model(f"hf:{tiny_bert}", num_classes=3, pretrained=True, pooling="cls", max_length=32)
    assert model.info.text["tokenizer"] == f"hf:{tiny_bert}" and model.backbone.pooling == "cls"
    assert model.info.input_size == (32,) and model.info.feature_dim == 32
    ids = model_inputs(_sentiment(6, 2, "s"), model).x
    model.eval()
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m")
    back.eval()
    assert back.info.arch == model.info.arch and back.tokenizer is not None
    assert back.info.text == {**model.info.text, "tokenizer": f"hf:{tmp_path / 'm' / 'hf'}"}
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))


@pytest.mark.parametrize("arch", ["hf", "text_transformer"])
def test_a_saved_text_model_carries_its_tokenizer_and_loads_after_its_origin_is_gone(tiny_bert, tmp_path,
                                                                                     arch):
    origin = tmp_path / "origin"
    shutil.copytree(tiny_bert, origin)
    if arch == "hf":
        model = create_model(f"hf:{origin}", num_classes=2, pretrained=True, max_length=24)
    else:
        model = create_model("text_transformer", num_classes=2, tokenizer=f"hf:{origin}", hidden=32, heads=2,
                             layers=1, max_length=24)
    model.eval()
    ids = model_inputs(_sentiment(6, 3, "s"), model).x
    save_model(model, tmp_path / "m")
    save_model(model, tmp_path / "m")  # saving again replaces the copy whole
    files = sorted(p.name for p in (tmp_path / "m" / "hf").iterdir())
    assert "tokenizer_config.json" in files and not any(f.endswith(".safetensors") for f in files)
    assert ("config.json" in files) == (arch == "hf")  # the encoder's config, for hf: models only
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "hf", "model.safetensors"]
    shutil.rmtree(origin)
    back = load_model(tmp_path / "m")
    back.eval()
    assert back.info.arch == model.info.arch
    assert back.tokenizer("good airline").input_ids == model.tokenizer("good airline").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))
    save_model(back, tmp_path / "again")  # and the copy is copied on
    assert load_model(tmp_path / "again").info.text["tokenizer"] == f"hf:{tmp_path / 'again' / 'hf'}"


def test_minilm_folders_hold_no_tokenizer_copy(minilm, tmp_path):
    save_model(minilm, tmp_path / "m")  # its files ship in a package
    assert not (tmp_path / "m" / "hf").exists()
    assert load_model(tmp_path / "m").info.text["tokenizer"] == "minilm"


def test_malformed_text_field_of_a_saved_config_is_refused():
    good = {"arch": "minilm", "num_classes": 2, "input_size": [128], "text": {"tokenizer": "minilm"}}
    assert ModelInfo.from_dict(good).text == {"tokenizer": "minilm"}
    with pytest.raises(CheckpointError, match="field 'text' must be null or an object with a 'tokenizer'"):
        ModelInfo.from_dict({**good, "text": {"tokenizer": 3}}, origin="x.json")


def test_probe_check_confirms_a_copied_encoder_and_skips_another_tokenizer(minilm, tiny_bert):
    target = create_model("minilm", num_classes=5, pretrained=False)
    report = transfer_parameters(minilm, target)
    check = check_copied_function(minilm, target, report)
    assert check.checked and check.ok and check.max_abs_diff == 0.0
    other = create_model(f"hf:{tiny_bert}", num_classes=2)
    student = create_model("text_transformer", num_classes=2, tokenizer=f"hf:{tiny_bert}", hidden=32,
                           heads=2, layers=2)
    report = transfer_parameters(other, student)
    check = check_copied_function(minilm, student, report)
    assert not check.checked and "read their inputs differently" in check.reason


# ----------------------------------------------------------------------------- training
def _splits(seed: int = 0) -> DataSplits:
    return DataSplits(_sentiment(64, seed, "train"), _sentiment(32, seed + 100, "val"),
                      _sentiment(200, seed + 200, "test"))


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_text_transformer_learns_sentiment_words_through_the_engine(tiny_bert, strategy):
    torch.manual_seed(0)
    model = create_model("text_transformer", num_classes=2, tokenizer=f"hf:{tiny_bert}", hidden=32, heads=2,
                         layers=2, dropout=0.0)
    data = _splits()
    cfg = TrainConfig(epochs=25, lr=3e-3, batch_size=16, backbone_lr_scale=1.0, strategy=strategy,
                      unfreeze_every=2, seed=0)
    trainer = Trainer(model, cfg)
    history = trainer.fit(data.train, data.val)
    assert history.epochs[-1]["train_accuracy"] > 0.9
    assert trainer.evaluate(data.test)[1] > 0.85  # the TextDataset is tokenised for the model here too


def test_lora_adapts_minilm_with_a_small_share_of_its_weights():
    from transferkit.engine.parameter_efficient import adapted_layers

    data = _splits(4)
    model = create_model("minilm", num_classes=2, pretrained=True)
    cfg = TrainConfig(epochs=6, lr=3e-3, batch_size=16, strategy="lora", seed=0,
                      lora={"rank": 4, "save": "adapters"})
    trainer = Trainer(model, cfg)
    history = trainer.fit(data.train, data.val)
    last = history.epochs[-1]
    assert last["trainable_params"] / last["total_params"] < 0.02
    assert any("encoder.layer.5" in name for name in adapted_layers(model))
    assert trainer.evaluate(data.test)[1] > 0.9


def test_cached_embeddings_train_a_linear_probe_on_minilm(minilm):
    data = _splits(3)
    model = create_model("minilm", num_classes=2, pretrained=True)
    cfg = TrainConfig(epochs=30, lr=1e-2, batch_size=16, strategy="linear_probe", seed=0)
    start = time.perf_counter()
    Trainer(model, cfg).fit(data.train, data.val)
    assert time.perf_counter() - start < 60
    assert Trainer(model, cfg).evaluate(data.test)[1] > 0.9


def test_slow_checkpoints_are_spaced_and_the_last_epoch_always_saves():
    from transferkit.engine.history import History

    trainer = Trainer(create_model("mlp", num_classes=2, in_features=4), TrainConfig(epochs=10))
    trainer._last_save, trainer._save_cost = time.perf_counter(), 2.0  # a 2 s write just now
    assert not trainer._checkpoint_due(3, History())
    assert trainer._checkpoint_due(9, History())  # the last epoch
    trainer._last_save -= 25.0  # 25 s later: more than 10x the write's time
    assert trainer._checkpoint_due(4, History())
    trainer._save_cost = 0.01  # a cheap write: every epoch
    assert trainer._checkpoint_due(5, History())


# ----------------------------------------------------------------------------- CLI
def test_finetune_on_a_text_file_compares_with_scratch_and_tfidf(tiny_bert, tmp_path):
    path = tmp_path / "reviews.csv"
    data = _sentiment(300, 5, "reviews")
    write_csv(path, data.texts, _labels_of(data))
    result = run("finetune", "--source", f"hf:{tiny_bert}", "--data", path, "--shots", 8, "--epochs", 3,
                 "--seeds", "0,1", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "tfidf+lr" in table and "TF-IDF + logistic regression" in table
    assert "(reference, no model transferred)" in table
    assert "finetune/scratch" in table and "(baseline)" in table
    import json

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["summary"]}
    assert rows["tfidf+lr"]["n_seeds"] == 2 and rows["tfidf+lr"]["negative_transfer"] is False
    scratch_runs = [r for r in metrics["runs"] if r["name"] == "finetune/scratch"]
    assert {r["arch"] for r in scratch_runs} == {"text_transformer"}
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    back = load_model(tmp_path / "out" / "model")
    assert back.tokenizer is not None


def test_named_columns_of_a_jsonl_file_work_in_finetune_and_evaluate(tiny_bert, tmp_path):
    """A file whose columns are not text / label: the flags name them; without them, one line says so."""
    import json

    data = _sentiment(200, 6, "reviews")
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"id": i, "review": t, "stars": ["one", "five"][int(y)]}) + "\n"
                            for i, (t, y) in enumerate(zip(data.texts, data.y, strict=True))))
    common = ["--source", f"hf:{tiny_bert}", "--data", path, "--shots", 8, "--epochs", 2, "--seeds", "0",
              "--no-baseline", "--out", tmp_path / "out"]
    assert_one_line_error(run("finetune", *common), "no text key 'text'",
                          "add it or name the text key with --text-column NAME (text_column=)")
    assert_one_line_error(run("finetune", *common, "--text-column", "revue"), "no text key 'revue'",
                          "did you mean --text-column review (text_column='review' in Python or a config)?")
    assert_one_line_error(run("finetune", *common, "--text-column", "review"), "no label key 'label'")
    result = run("finetune", *common, "--text-column", "review", "--label-column", "stars")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    (arm,) = [r for r in metrics["runs"] if r["name"] != "tfidf+lr"]
    evaluated = run("evaluate", tmp_path / "out" / "model", "--data", path, "--text-column", "review",
                    "--label-column", "stars", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.stdout)
    assert scores["n"] == 40 and scores["accuracy"] == pytest.approx(arm["accuracy"])
    assert scores["class_names"] == ["five", "one"]
    # predict: the model names its classes; on the test split its rows give the evaluated accuracy
    labelled = tmp_path / "test.csv"
    done = run("predict", tmp_path / "out" / "model", "--data", path, "--text-column", "review",
               "--label-column", "stars", "--split", "test", "--out", labelled)
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(labelled.open(newline="")))
    assert list(rows[0]) == ["row", "text", "prediction", "probability", "label"] and len(rows) == 40
    hits = [r["prediction"] == r["label"] for r in rows]
    assert sum(hits) / len(hits) == pytest.approx(scores["accuracy"])
    assert {r["prediction"] for r in rows} <= {"five", "one"} and all(0.5 <= float(r["probability"]) <= 1
                                                                      for r in rows)
    new = tmp_path / "new.txt"
    new.write_text("the film was great\nthe plot was awful, really\n")
    done = run("predict", tmp_path / "out" / "model", "--data", new, "--out", tmp_path / "new.csv")
    assert done.exit_code == 0, done.output
    assert "wrote 2 predictions (classes five, one)" in done.output
    rows = list(csv.DictReader((tmp_path / "new.csv").open(newline="")))
    assert [r["text"] for r in rows] == ["the film was great", "the plot was awful, really"]
    assert list(rows[0]) == ["row", "text", "prediction", "probability"]
    assert_one_line_error(run("predict", tmp_path / "out" / "model", "--data", new, "--out",
                              tmp_path / "new.csv"), "already exists; pass --overwrite")
    three = tmp_path / "three.jsonl"  # labelled data with a class the model never learned: refused
    three.write_text("".join(json.dumps({"review": f"text {i}", "stars": "one five three".split()[i % 3]})
                             + "\n" for i in range(30)))
    assert_one_line_error(run("predict", tmp_path / "out" / "model", "--data", three, "--text-column",
                              "review", "--label-column", "stars", "--split", "test", "--out",
                              tmp_path / "three.csv"), "has 3 classes but the model's head predicts 2")


def test_adapt_between_two_text_domains_without_target_labels(tiny_bert, tmp_path):
    import json

    def write(path, data, filler):  # both domains' files name their text column "post"
        texts = [" ".join(filler[len(word) % len(filler)] if word in WORDS else word for word in t.split())
                 for t in data.texts]
        write_csv(path, texts, _labels_of(data), header=("post", "label"))

    write(tmp_path / "source.csv", _sentiment(200, 8, "s"), WORDS[:6])
    write(tmp_path / "target.csv", _sentiment(200, 9, "t"), WORDS[6:])
    result = run("adapt", "--source", f"hf:{tiny_bert}", "--source-data", tmp_path / "source.csv",
                 "--target-data", tmp_path / "target.csv", "-m", "dann", "-m", "coral", "--weights", "0.3",
                 "--epochs", 2, "--seeds", "0", "--out", tmp_path / "out", "--text-column", "post")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    names = {r["name"] for r in metrics["summary"]}
    assert {"adapt/source-only", "adapt/dann/w=0.3", "adapt/coral/w=0.3", "tfidf+lr"} <= names
    assert metrics["model_choice"]["criterion"] and metrics["about"]["kind"] == "adapt"
    use = metrics["about"]["data_use"]
    assert "labelled training texts" in use and "144 training texts without labels" in use
    assert use.endswith("inputs: texts") and "images" not in use
    # a pool of unlabelled target-domain texts (a .txt file) to adapt to instead of the training split
    pool = tmp_path / "pool.txt"
    target_words = _sentiment(300, 10, "p")
    pool.write_text("\n".join(" ".join(WORDS[6:][len(w) % 6] if w in WORDS else w for w in t.split())
                              for t in target_words.texts) + "\n")
    result = run("adapt", "--source", f"hf:{tiny_bert}", "--source-data", tmp_path / "source.csv",
                 "--target-data", tmp_path / "target.csv", "-m", "coral", "--weights", "0.3", "--no-oracle",
                 "--epochs", 1, "--seeds", "0", "--out", tmp_path / "pooled", "--text-column", "post",
                 "--unlabeled", pool, "target_data.unlabeled_size=250")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "pooled" / "metrics.json").read_text())
    assert f"250 texts without labels ({pool}), 40 labelled test texts" in metrics["about"]["data_use"]
    identity = json.loads((tmp_path / "pooled" / "run.json").read_text())["identity"]
    assert identity["unlabeled"]["size"] == 250  # a resume with another pool is refused
    bad = run("adapt", "--source-data", tmp_path / "source.csv", "--target-data", tmp_path / "target.csv",
              "source_data.unlabeled=x.txt", "--out", tmp_path / "bad")
    assert_one_line_error(bad, "the source domain is labelled", "target_data.unlabeled (--unlabeled)")


def test_embeddings_move_by_token_string_between_tokenizers(tiny_bert):
    source = create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=2)  # MiniLM's vocab
    target = create_model(f"hf:{tiny_bert}", num_classes=2, pretrained=False)
    before = target.backbone.model.embeddings.word_embeddings.weight.detach().clone()
    report = transfer_parameters(source, target)
    entry = next(e for e in report.entries if e.target_name.endswith("word_embeddings.weight"))
    s_vocab, t_vocab = source.tokenizer.get_vocab(), target.tokenizer.get_vocab()
    assert entry.status == "partial" and entry.reason.startswith(f"{len(t_vocab) - 1} of the target's "
                                                                f"{len(t_vocab)} token embeddings")
    s_emb = source.backbone.model.embeddings.word_embeddings.weight
    t_emb = target.backbone.model.embeddings.word_embeddings.weight
    for token in ("good", "awful", "[CLS]", "##s"):
        assert torch.equal(t_emb[t_vocab[token]], s_emb[s_vocab[token]])  # its own vector, not row i's
    assert torch.equal(t_emb[t_vocab["qzxjv"]], before[t_vocab["qzxjv"]])  # not in the source's vocabulary
    assert entry.numel_transferred == (len(t_vocab) - 1) * 32


def test_a_text_teacher_with_its_own_tokenizer_distils_into_another_vocabulary(tiny_bert):
    from transferkit.transfer.distill import LogitKD, Teacher

    data = _splits(6)
    torch.manual_seed(0)
    teacher = create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=2, dropout=0.0)
    Trainer(teacher, TrainConfig(epochs=25, lr=3e-3, batch_size=16, backbone_lr_scale=1.0, seed=0)).fit(
        data.train, data.val)
    assert Trainer(teacher, TrainConfig()).evaluate(data.test)[1] > 0.9  # MiniLM's vocabulary
    student = create_model(f"hf:{tiny_bert}", num_classes=2, pretrained=False)  # a 31-token vocabulary
    kd = LogitKD(Teacher(teacher, precompute=True), temperature=2.0)
    trainer = Trainer(student, TrainConfig(epochs=25, lr=3e-3, batch_size=16, backbone_lr_scale=1.0, seed=0),
                      objectives=[kd])  # no labels: the teacher's soft targets only
    trainer.fit(data.train, data.val)
    assert trainer.evaluate(data.test)[1] > 0.85
    own = kd.teachers[0]._own
    assert own is not None and own.tokenizer_key == tokenizer_key(teacher.tokenizer)


def test_rank_scores_text_encoders_and_prefers_minilm_on_newsgroups(tmp_path):
    import json

    result = run("rank", "--source", "minilm", "--source", "text_transformer", "--data", "20newsgroups",
                 "--shots", 5, "--out", tmp_path / "rank.json")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("scored on 20newsgroups: 100 labelled training examples, 5 per class")
    described = "minilm: minilm; preprocessing: text: tokenizer minilm, first 128 tokens, mean pooling"
    assert described in result.stdout
    ranking = json.loads((tmp_path / "rank.json").read_text())
    rows = {r["name"]: r for r in ranking["rows"]}
    assert rows["minilm"]["logme"] > rows["text_transformer"]["logme"]


@pytest.fixture(scope="module")
def text_teacher(tmp_path_factory):
    """A CSV of 300 short texts (a sentiment word among filler words) and a text transformer with
    MiniLM's vocabulary trained on such texts, saved: (csv path, teacher folder)."""
    folder = tmp_path_factory.mktemp("text-teacher")
    data = _sentiment(300, 11, "reviews")
    path = folder / "reviews.csv"
    write_csv(path, data.texts, _labels_of(data))
    torch.manual_seed(0)
    teacher = create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=2, dropout=0.0)
    splits = _splits(12)
    Trainer(teacher, TrainConfig(epochs=20, lr=3e-3, batch_size=16, backbone_lr_scale=1.0, seed=0)).fit(
        splits.train, splits.val)
    save_model(teacher, folder / "teacher")
    return path, folder / "teacher"


def test_distill_cli_on_text_compares_the_student_with_itself_from_scratch(tiny_bert, text_teacher, tmp_path):
    import json

    path, teacher = text_teacher
    result = run("distill", "--teacher", teacher, "--student", f"hf:{tiny_bert}", "--data", path,
                 "--shots", 8, "-m", "cross_entropy:weight=0.5", "-m", "kd:weight=0.5,temperature=2",
                 "--epochs", 3, "--seeds", "0", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    names = [r["name"] for r in metrics["summary"]]
    assert len(names) == 3 and "tfidf+lr" in names and any(n.endswith("/scratch") for n in names)
    assert metrics["about"]["student"]["arch"] == f"hf:{tiny_bert}"
    assert metrics["student"]["params"] < metrics["teacher"]["params"]
    assert metrics["student"]["examples_per_second"] > 0 and metrics["teacher"]["examples_per_second"] > 0
    assert "examples/s, student" in (tmp_path / "out" / "report.html").read_text()


def _distil_into_small_student(objective, seed: int, lr: float):
    """A 2-layer, 64-wide text transformer trained 4 epochs with cross-entropy and ``objective``."""
    from transferkit.engine import CrossEntropy

    data = _splits(seed)
    student = create_model("text_transformer", num_classes=2, hidden=64, heads=2, layers=2)
    trainer = Trainer(student, TrainConfig(epochs=4, lr=lr, batch_size=16, backbone_lr_scale=1.0, seed=0),
                      objectives=[CrossEntropy(), objective])
    return trainer.fit(data.train, data.val)


def test_layer_hints_pair_each_student_layer_with_the_teacher_layer_at_its_depth(minilm):
    from transferkit.transfer.distill import LayerHints, Teacher, uniform_layer_map

    assert uniform_layer_map(["s1", "s2", "s3", "s4"], [f"t{i}" for i in range(1, 13)]) == [
        ("s1", "t3"), ("s2", "t6"), ("s3", "t9"), ("s4", "t12")]  # TinyBERT's 4-of-12 mapping
    hints = LayerHints(Teacher(minilm))
    history = _distil_into_small_student(hints, seed=2, lr=1e-3)
    assert hints.pairs == [("backbone.model.encoder.layer.0", "backbone.model.encoder.layer.2"),
                           ("backbone.model.encoder.layer.1", "backbone.model.encoder.layer.5")]
    assert [a.student_shape[1] for a in hints.adapters] == [64, 64]
    assert [a.teacher_shape[1] for a in hints.adapters] == [384, 384]
    losses = [row["loss_layer_hints"] for row in history.epochs]
    assert losses[-1] < 0.8 * losses[0]  # the student's layers move towards the teacher's


def test_token_hints_between_two_tokenizers_are_refused(tiny_bert):
    from transferkit.transfer.distill import Hint, Teacher

    teacher = create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=2)
    student = create_model(f"hf:{tiny_bert}", num_classes=2, pretrained=False)
    hint = Hint(Teacher(teacher), student_layer="backbone.model.encoder.layer.1",
                teacher_layer="backbone.model.encoder.layer.1")
    with pytest.raises(ShapeError, match="tokenise differently, so their tokens do not correspond"):
        Trainer(student, TrainConfig(epochs=1), objectives=[hint]).fit(_splits(0).train)


@pytest.mark.parametrize("regularizer", ["l2sp", "ewc", "lwf"])
def test_finetune_on_text_that_keeps_the_source_reports_its_retention(tiny_bert, tmp_path, regularizer):
    import json

    def write(path, data, labels):
        write_csv(path, data.texts, labels)

    source_task = _sentiment(300, 13, "sentiment")
    write(tmp_path / "sentiment.csv", source_task, [source_task.classes[int(y)] for y in source_task.y])
    topic = _sentiment(300, 14, "topic")  # another task on the same kind of texts: which word comes first
    write(tmp_path / "topic.csv", topic,
          ["early" if t.split()[0] in WORDS[:6] else "late" for t in topic.texts])
    torch.manual_seed(0)
    source = create_model("text_transformer", num_classes=2, tokenizer=f"hf:{tiny_bert}", hidden=32, heads=2,
                          layers=2, dropout=0.0)
    splits = _splits(15)
    Trainer(source, TrainConfig(epochs=20, lr=3e-3, batch_size=16, backbone_lr_scale=1.0, seed=0)).fit(
        splits.train, splits.val)
    save_model(source, tmp_path / "source")
    result = run("finetune", "--source", tmp_path / "source", "--data", tmp_path / "topic.csv", "--shots", 8,
                 "--regularizer", regularizer, "--source-data", tmp_path / "sentiment.csv", "--epochs", 3,
                 "--seeds", "0", "--no-baseline", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    run_row = json.loads((tmp_path / "out" / "metrics.json").read_text())["runs"][0]
    assert run_row["source_accuracy_before"] > 0.9  # the sentiment source on its own test texts
    assert 0.0 <= run_row["source_accuracy_after"] <= 1.0
    assert "source acc. before -> after" in result.stdout


def test_attention_distributions_match_the_transformers_own_attention_probabilities(minilm):
    from transferkit.models.surgery import LayerTap
    from transferkit.transfer.distill.self_attention import attention_distributions, projections

    data = model_inputs(_sentiment(4, 3, "s"), minilm)  # texts of different lengths: padding masked
    layer = "backbone.model.encoder.layer.5"
    q_name, k_name = projections(minilm, layer)
    assert (q_name, k_name) == (f"{layer}.attention.self.query", f"{layer}.attention.self.key")
    minilm.eval()
    inputs = minilm.input_adapter(data.x)
    with torch.no_grad(), LayerTap(minilm, [q_name, k_name], detach=True) as tap:
        minilm(data.x)
        ours = attention_distributions(tap.features[q_name], tap.features[k_name],
                                       inputs["attention_mask"], heads=12).exp()
        minilm.backbone.model.set_attn_implementation("eager")
        try:
            reference = minilm.backbone.model(**inputs, output_attentions=True).attentions[5]
        finally:
            minilm.backbone.model.set_attn_implementation("sdpa")
    real = inputs["attention_mask"].bool()
    for i in range(len(data)):  # rows of real query tokens
        n = int(real[i].sum())
        assert torch.allclose(ours[i, :, :n, :n], reference[i, :, :n, :n], atol=1e-5)


def test_self_attention_distillation_pulls_the_students_attention_to_the_teachers(minilm):
    from transferkit.transfer.distill import SelfAttentionKD, Teacher

    kd = SelfAttentionKD(Teacher(minilm))
    history = _distil_into_small_student(kd, seed=5, lr=2e-3)
    assert kd.heads == 2 and kd.student_qk[0] == "backbone.model.encoder.layer.1.attention.self.query"
    losses = [row["loss_self_attention"] for row in history.epochs]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]


def test_a_text_model_exports_to_onnx_with_its_tokenizer_and_runs_on_texts_of_any_length(tiny_bert, tmp_path):
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    model = create_model(f"hf:{tiny_bert}", num_classes=2, pretrained=True, max_length=24)
    Trainer(model, TrainConfig(epochs=2, lr=1e-3, batch_size=16, seed=0)).fit(_sentiment(32, 0, "t"))
    save_model(model, tmp_path / "m")
    file = tmp_path / "sentiment.onnx"
    with open(tmp_path / "texts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        data = _sentiment(40, 1, "csv")
        writer.writerows((t, data.classes[int(y)]) for t, y in zip(data.texts, data.y, strict=True))
    result = run("export", tmp_path / "m", "--out", file, "--data", tmp_path / "texts.csv")
    assert result.exit_code == 0, result.output
    assert "inputs input_ids and attention_mask (batch, sequence <= 24)" in result.output
    assert "checked with onnxruntime on 8 texts/test inputs (batch sizes 8 and 1)" in result.output  # 20 %
    assert "predictions agree on 8/8" in result.output
    # the file and the tokenizer beside it are all a user needs: no transferkit, no torch model
    tok = AutoTokenizer.from_pretrained(tmp_path / "sentiment.tokenizer")
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    texts = ["good airline", "bad bad apple delay rude", "the service was great and the seats were good"]
    enc = tok(texts, padding=True, return_tensors="np")
    got = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                             "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    model.eval()
    with torch.no_grad():
        want = model(model_inputs(TextDataset(texts, torch.zeros(3, dtype=torch.long), ["a", "b"]), model).x)
    assert got.shape == (3, 2) and np.abs(got - want.numpy()).max() < 1e-4
    again = run("export", tmp_path / "m", "--out", file)
    assert_one_line_error(again, "already exists; pass --overwrite")


def test_text_export_refuses_an_input_shape_and_image_data(tmp_path):
    from transferkit.errors import ConfigError, ShapeError
    from transferkit.io.export import export_onnx

    model = create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=1, max_length=16)
    with pytest.raises(ConfigError, match="takes token ids of any length up to its max_length"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(16,))
    with pytest.raises(ShapeError, match="a text model is checked on texts"):
        export_onnx(model, tmp_path / "m.onnx", inputs=torch.rand(4, 16))
    report = export_onnx(model, tmp_path / "m.onnx", samples=5)  # random token ids of random lengths
    assert report.verified and report.max_abs_diff < 1e-4 and report.batch_sizes == (5, 1)
    assert (tmp_path / "m.tokenizer" / "tokenizer_config.json").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_self_attention_needs_a_transformer_teacher():
    from transferkit.errors import ConfigError
    from transferkit.transfer.distill import SelfAttentionKD, Teacher

    cnn = create_model("small_cnn", num_classes=2, in_channels=1, image_size=8)
    with pytest.raises(ConfigError, match="has no query / key projection"):
        SelfAttentionKD(Teacher(cnn))


@pytest.mark.parametrize("direction", ["bert->distilbert", "distilbert->bert"])
def test_bert_and_distilbert_exchange_weights_and_compute_the_same_function(tmp_path, direction):
    from transformers import BertConfig, BertModel, BertTokenizer, DistilBertConfig, DistilBertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(40))]
    for name in ("bert", "distilbert"):
        BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tmp_path / name)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    DistilBertModel(DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                     max_position_embeddings=64)).save_pretrained(tmp_path / "distilbert")
    src_name, tgt_name = direction.split("->")
    source = create_model(f"hf:{tmp_path / src_name}", num_classes=2, pretrained=True)
    target = create_model(f"hf:{tmp_path / tgt_name}", num_classes=2, pretrained=True)
    report = transfer_parameters(source, target)
    assert all(e.status == "copied" for e in report.entries  # all but BERT's token types and unused pooler
               if "token_type" not in e.target_name and ".pooler." not in e.target_name)
    assert {u.source_name.rsplit(".", 2)[-2] for u in report.unused} <= {"dense"}  # BERT's unused pooler
    check = check_copied_function(source, target, report)
    assert check.checked and check.ok and check.relative_diff < 1e-5  # the same function


def test_distill_on_an_unlabelled_text_transfer_set_across_tokenizers(tiny_bert, text_teacher, tmp_path):
    """The teacher (MiniLM's vocabulary) reads the unlabelled texts in its own token ids; the student
    (the tiny BERT's 31 tokens) learns from its soft labels on them: far above its few labels alone."""
    import json

    path, teacher = text_teacher
    result = run("distill", "--teacher", teacher, "--student", f"hf:{tiny_bert}", "--data",
                 path, "--shots", 2, "--unlabeled", "rest", "-m", "cross_entropy:weight=0.1",
                 "-m", "kd:weight=0.9,temperature=2", "--epochs", 40, "--seeds", "0",
                 "--out", tmp_path / "out", "train.unlabeled_ratio=8", "train.lr=0.003", "train.batch_size=4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["summary"]}
    assert metrics["about"]["recipe"]["unlabeled"] == "216 examples of rest, 8 per labelled example in a step"
    assert rows["distill/kd"]["accuracy_mean"] > rows["distill/scratch"]["accuracy_mean"] + 0.1


def test_an_unlabelled_text_file_is_read_as_the_same_transfer_set(tiny_bert, text_teacher, tmp_path):
    """A file of texts alone (.txt, one a line, empty lines skipped; .jsonl objects with only a text
    key, named with --text-column) holding the target's training texts trains exactly as ``rest``."""
    import json

    path, teacher = text_teacher
    texts = load_dataset(path, seed=0).train.texts  # what `rest` is for the first seed
    (tmp_path / "pool.txt").write_text("\n\n".join(texts) + "\n")
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    accuracy = {}
    for pool, flags in (("rest", []), (tmp_path / "pool.txt", []),
                        (tmp_path / "pool.jsonl", ["--text-column", "body"])):
        out = tmp_path / f"out-{Path(pool).suffix or 'rest'}"
        # the pool's column name also names the target's text column: give the target that column too
        data = path
        if flags:
            data = tmp_path / "reviews.csv"
            write_csv(data, *_read_back(path), header=("body", "label"))
        result = run("distill", "--teacher", teacher, "--student", f"hf:{tiny_bert}", "--data", data,
                     "--shots", 2, "--unlabeled", pool, *flags, "-m", "cross_entropy:weight=0.1",
                     "-m", "kd:weight=0.9,temperature=2", "--epochs", 4, "--seeds", "0", "--no-baseline",
                     "--out", out, "train.unlabeled_ratio=8", "train.lr=0.003", "train.batch_size=4")
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["about"]["recipe"]["unlabeled"].startswith(f"216 examples of {pool}, ")
        accuracy[str(pool)] = [(r["accuracy"], r["history"][-1]["train_loss"])
                               for r in metrics["runs"] if r["name"] == "distill/kd"]
    assert len(set(map(str, accuracy.values()))) == 1, accuracy
    # the target file itself as the pool would train on its test rows: refused
    same = run("distill", "--teacher", teacher, "--student", f"hf:{tiny_bert}", "--data", path, "--shots", 2,
               "--unlabeled", path, "-m", "kd", "--out", tmp_path / "same")
    assert_one_line_error(same, "is (part of) the target data", "--unlabeled rest")
