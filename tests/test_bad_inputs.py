"""Bad inputs across every subcommand: each one is refused with exit code 2 and at most two lines on
stderr, no traceback, no "unexpected" catch-all, and the output folder is left byte-identical.

Every bad file is built in its real on-disk format (safetensors, torch zip, JSON, YAML, CSV, NPZ, PNG)
once per module in a "world" folder; each case names its arguments with ``{placeholders}`` for the
world's paths and the fragments its one error line must contain.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import run


class _Payload:
    """Unpickling this creates a file: proof that a loader ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _write_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


_DROP = object()


def _model_variant(world: Path, good: Path, name: str, **changes) -> Path:
    dest = world / "models" / name
    shutil.copytree(good, dest)
    if changes:
        _write_config(dest, **changes)
    return dest


def _npz(path: Path, x, y) -> Path:
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return path


def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits_source) -> dict[str, str]:
    """Paths of good and bad inputs, by placeholder name."""
    from PIL import Image

    from transferkit.workflows import finetune

    w = tmp_path_factory.mktemp("world")
    (w / "models").mkdir()
    (w / "data").mkdir()
    (w / "configs").mkdir()
    good = w / "models" / "good"
    shutil.copytree(digits_source, good)
    p: dict[str, Path] = {"good": good, "marker": w / "PAYLOAD-RAN"}

    # ---- model folders
    (w / "models" / "empty").mkdir()
    p["m_empty"] = w / "models" / "empty"
    p["m_badjson"] = _model_variant(w, good, "badjson")
    (p["m_badjson"] / "config.json").write_text("{not json")
    p["m_notkit"] = _model_variant(w, good, "notkit", format=_DROP)
    p["m_kwargs_list"] = _model_variant(w, good, "kwargs_list", kwargs=[1, 2])
    p["m_input_str"] = _model_variant(w, good, "input_str", input_size="abc")
    p["m_classes_str"] = _model_variant(w, good, "classes_str", num_classes="ten")
    p["m_growth_dict"] = _model_variant(w, good, "growth_dict", growth={"op": "widen"})
    p["m_mean_str"] = _model_variant(w, good, "mean_str", mean="abc")
    p["m_arch_unknown"] = _model_variant(w, good, "arch_unknown", arch="nosuch_arch")
    p["m_arch_custom"] = _model_variant(w, good, "arch_custom", arch="custom")
    p["m_arch_int"] = _model_variant(w, good, "arch_int", arch=7)
    p["m_other_kwargs"] = _model_variant(w, good, "other_kwargs", kwargs={"in_features": 64, "hidden": [16]})
    p["m_bad_kwarg"] = _model_variant(w, good, "bad_kwarg", kwargs={"in_features": 64, "bogus": 1})
    p["m_neg_kwarg"] = _model_variant(w, good, "neg_kwarg", kwargs={"in_features": -3})
    p["m_no_weights"] = _model_variant(w, good, "no_weights")
    (p["m_no_weights"] / "model.safetensors").unlink()
    p["m_trunc_weights"] = _model_variant(w, good, "trunc_weights")
    data = (p["m_trunc_weights"] / "model.safetensors").read_bytes()
    (p["m_trunc_weights"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    p["m_nan_weights"] = _model_variant(w, good, "nan_weights")
    from safetensors.torch import load_file

    state = load_file(str(good / "model.safetensors"))
    first = next(iter(state))
    state[first] = state[first].clone()
    state[first].view(-1)[:5] = float("nan")
    save_file(state, str(p["m_nan_weights"] / "model.safetensors"), metadata={"format": "pt"})
    p["m_timm_payload"] = _model_variant(
        w, good, "timm_payload", arch="timm:resnet18", kwargs={"checkpoint_path": str(w / "payload.pt")}
    )
    p["m_trust"] = _model_variant(
        w, good, "trust", arch="hf:" + str(w / "models" / "good"), kwargs={"trust_remote_code": True}
    )
    torch.save({"w": _Payload(str(p["marker"]))}, w / "payload.pt")

    # ---- bare weights files
    wdir = w / "weights"
    wdir.mkdir()
    (wdir / "empty.safetensors").write_bytes(b"")
    (wdir / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (wdir / "text.pt").write_text("not a torch file")
    (wdir / "weights.h5").write_bytes(b"\x89HDF")
    torch.save({"w": _Payload(str(p["marker"]))}, wdir / "pickled.pt")
    save_file({"a.weight": torch.zeros(3, 3)}, str(wdir / "bare.safetensors"))
    torch.save({"fc.weight": torch.zeros(2, 64), "fc.bias": torch.zeros(2)}, wdir / "foreign.pt")
    for name in ("empty.safetensors", "garbage.safetensors", "text.pt", "weights.h5", "pickled.pt",
                 "bare.safetensors", "foreign.pt"):
        p["w_" + name.replace(".", "_")] = wdir / name

    # ---- data files
    d = w / "data"
    rng = np.random.default_rng(0)
    x = rng.random((60, 64), dtype=np.float32)
    y = np.arange(60) % 10
    p["d_ok"] = _npz(d / "ok.npz", x, y)
    p["d_nan_npz"] = _npz(d / "nan.npz", np.where(np.arange(64) == 3, np.nan, x), y)
    p["d_inf_npz"] = _npz(d / "inf.npz", np.where(np.arange(64) == 5, np.inf, x), y)
    p["d_stray"] = _npz(d / "stray.npz", x, np.where(np.arange(60) == 7, 99, y))
    p["d_neg"] = _npz(d / "neg.npz", x, np.where(np.arange(60) == 7, -1, y))
    p["d_one_class"] = _npz(d / "one_class.npz", x, np.zeros(60, dtype=int))
    p["d_12class"] = _npz(d / "twelve.npz", rng.random((72, 64), dtype=np.float32), np.arange(72) % 12)
    p["d_nokeys"] = d / "nokeys.npz"
    np.savez(p["d_nokeys"], a=x, b=y)
    p["d_object"] = d / "object.npz"
    np.savez(p["d_object"], x=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=np.array([0, 1]))
    p["d_trunc_npz"] = d / "trunc.npz"
    raw = p["d_ok"].read_bytes()
    p["d_trunc_npz"].write_bytes(raw[: len(raw) // 2])
    p["d_garbage_npz"] = d / "garbage.npz"
    p["d_garbage_npz"].write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    p["d_mismatch"] = _npz(d / "mismatch.npz", x, y[:50])
    p["d_float_labels"] = _npz(d / "float_labels.npz", x, y + 0.5)
    header = ",".join(f"f{i}" for i in range(4)) + ",label\n"
    rows = "".join(f"{i % 3}.0,1,2,3,{i % 2}\n" for i in range(20))
    p["d_csv_latin1"] = _csv(d / "latin1.csv", header + rows + "é,1,2,3,0\n", "latin-1")
    p["d_csv_ragged"] = _csv(d / "ragged.csv", header + rows + "1,2\n")
    p["d_csv_empty"] = _csv(d / "empty.csv", "")
    p["d_csv_header_only"] = _csv(d / "header.csv", header)
    p["d_csv_nolabel"] = _csv(d / "nolabel.csv", header.replace("label", "target") + rows)
    p["d_csv_nan"] = _csv(d / "nan.csv", header + rows + "nan,1,2,3,0\ninf,1,2,3,1\n")
    p["d_csv_text"] = _csv(d / "text.csv", header + rows + "abc,1,2,3,0\n")
    (d / "empty_dir").mkdir()
    p["d_empty_dir"] = d / "empty_dir"
    imgs = d / "images"
    for cls in ("cat", "dog"):
        (imgs / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(imgs / cls / f"{i}.png")
    p["d_images_corrupt"] = d / "images_corrupt"
    shutil.copytree(imgs, p["d_images_corrupt"])
    (p["d_images_corrupt"] / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    p["d_images_empty_class"] = d / "images_empty_class"
    shutil.copytree(imgs, p["d_images_empty_class"])
    (p["d_images_empty_class"] / "bird").mkdir()
    p["d_images_one_class"] = d / "images_one_class"
    shutil.copytree(imgs / "cat", p["d_images_one_class"] / "cat")
    p["d_images_rgb"] = d / "images_rgb"
    for cls in range(10):
        (p["d_images_rgb"] / f"c{cls}").mkdir(parents=True)
        for i in range(4):
            arr = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(p["d_images_rgb"] / f"c{cls}" / f"{i}.png")
    p["d_unknown_ext"] = d / "data.xyz"
    p["d_unknown_ext"].write_text("1,2,3")

    # ---- config files
    c = w / "configs"
    texts = {
        "c_invalid": "train:\n  epochs: 2\n lr: [1\n",
        "c_list": "- a\n- b\n",
        "c_scalar": "just text\n",
        "c_unknown": "trian:\n  epochs: 2\n",
        "c_types": "train:\n  epochs: abc\n  lr: fast\n",
        "c_negative": "train:\n  lr: -1\n  batch_size: 0\n",
        "c_strategy": "train:\n  strategy: sideways\n",
        "c_seeds_empty": "seeds: []\n",
        "c_trust": "model:\n  source: hf:some/model\n  kwargs:\n    trust_remote_code: true\n",
        "c_data_section": "data: digits\n",
        "c_shots_zero": "data:\n  shots: 0\n",
    }
    for name, text in texts.items():
        p[name] = c / f"{name}.yaml"
        p[name].write_text(text)
    p["c_latin1"] = c / "c_latin1.yaml"
    p["c_latin1"].write_bytes("name: caf\u00e9\n".encode("latin-1"))
    p["c_missing"] = c / "missing.yaml"

    # ---- output folders: a finished run, a file, an empty place
    done = w / "done"
    finetune({"data": {"dataset": "digits", "shots": 2, "val_fraction": 0.2},
              "model": {"source": str(digits_source)}, "out": str(done),
              "train": {"strategy": "linear_probe", "epochs": 1}})
    p["done"] = done
    p["file"] = w / "a-file.txt"
    p["file"].write_text("keep")
    return {k: str(v) for k, v in p.items()}


# Common argument lists.
FT = ["finetune", "--data", "digits", "--epochs", "1", "--shots", "2", "--strategy", "linear_probe",
      "data.val_fraction=0.2"]
FT_SRC = ["--source", "{good}"]
DI = ["distill", "--teacher", "{good}", "--data", "digits", "--epochs", "1", "--shots", "2",
      "data.val_fraction=0.2"]
AD = ["adapt", "--source-data", "digits", "--target-data", "digits", "--epochs", "1", "--no-oracle"]
EV = ["evaluate", "{good}", "--data"]
RK = ["rank", "--data", "digits", "--candidates"]
GR = ["grow", "{good}"]

MODEL_VARIANTS = {
    # placeholder: fragment of the error line
    "m_empty": "neither config.json nor model.safetensors",
    "m_badjson": "not valid JSON",
    "m_notkit": "not a transferkit model config",
    "m_kwargs_list": "kwargs",
    "m_input_str": "input_size",
    "m_classes_str": "num_classes",
    "m_growth_dict": "growth",
    "m_mean_str": "mean",
    "m_arch_unknown": "nosuch_arch",
    "m_arch_custom": "custom",
    "m_arch_int": "arch",
    "m_other_kwargs": "do not fit",
    "m_bad_kwarg": "bogus",
    "m_neg_kwarg": "in_features",
    "m_no_weights": "no model.safetensors",
    "m_trunc_weights": "safetensors",
    "m_nan_weights": "non-finite",
    "m_timm_payload": "checkpoint_path",
    "m_trust": "trust_remote_code",
}
WEIGHT_FILES = {
    "w_empty_safetensors": "empty",
    "w_garbage_safetensors": "not a valid safetensors",
    "w_text_pt": "could not be read",
    "w_weights_h5": "unsupported checkpoint type",
    "w_pickled_pt": "pickled",
    "w_bare_safetensors": "cannot tell the architecture",
    "w_foreign_pt": "cannot tell the architecture",
}
DATA_VARIANTS = {
    "d_nan_npz": "non-finite",
    "d_inf_npz": "non-finite",
    "d_stray": "99",
    "d_neg": "-1",
    "d_nokeys": "nokeys.npz",
    "d_object": "pickle",
    "d_trunc_npz": "trunc.npz",
    "d_garbage_npz": "garbage.npz",
    "d_mismatch": "mismatch.npz",
    "d_float_labels": "float_labels.npz",
    "d_csv_latin1": "UTF-8",
    "d_csv_ragged": "ragged.csv",
    "d_csv_empty": "empty.csv",
    "d_csv_header_only": "header.csv",
    "d_csv_nolabel": "label",
    "d_csv_nan": "non-finite",
    "d_csv_text": "text.csv",
    "d_empty_dir": "empty_dir",
    "d_images_corrupt": "1.png",
    "d_images_empty_class": "bird",
    "d_unknown_ext": "data.xyz",
}

CASES: list[tuple[str, list[str], list[str]]] = []


def case(case_id: str, args: list[str], *fragments: str) -> None:
    CASES.append((case_id, args, list(fragments)))


# ---- finetune: bad models as the source, bad data, bad flags, bad configs, bad output folders
for name, frag in MODEL_VARIANTS.items():
    case(f"finetune-source-{name}", [*FT, "--source", f"{{{name}}}", "--out", "{out}"], frag)
for name, frag in WEIGHT_FILES.items():
    case(f"finetune-source-{name}", [*FT, "--source", f"{{{name}}}", "model.source_arch=mlp",
                                     "model.kwargs.in_features=64", "--out", "{out}"],
         "do not fit" if "architecture" in frag else frag)
for name, frag in DATA_VARIANTS.items():
    case(f"finetune-data-{name}", ["finetune", *FT_SRC, "--data", f"{{{name}}}", "--out", "{out}"], frag)
case("finetune-data-one-class", ["finetune", *FT_SRC, "--data", "{d_one_class}", "--out", "{out}"], "class")
case("finetune-data-one-class-images", ["finetune", "--arch", "small_cnn", "--data", "{d_images_one_class}",
                                        "--out", "{out}"], "class")
case("finetune-data-typo", [*FT, *FT_SRC, "--data", "digitz", "--out", "{out}"], "digitz")
case("finetune-data-missing-path", [*FT, *FT_SRC, "--data", "{world}/nothing/here.npz", "--out", "{out}"],
     "here.npz")
for flag, value, frag in [
    ("--epochs", "abc", "--epochs"), ("--epochs", "0", "epochs"), ("--epochs", "-2", "epochs"),
    ("--shots", "abc", "--shots"), ("--shots", "0", "shots"), ("--shots", "-3", "shots"),
    ("--seeds", "a,b", "seeds"), ("--seeds", ",", "seeds"), ("--strategy", "sideways", "strategy"),
    ("--arch", "nosuch", "nosuch"), ("--source", "nosuch_model", "nosuch_model"),
    ("--reg-weight", "0.5", "--regularizer"), ("--regularizer", "nosuch", "nosuch"),
    ("--regularizer", "l2sp:weight=abc", "weight"), ("--regularizer", "l2sp:bogus=1", "bogus"),
    ("--regularizer", "kd:weight=[1,2]", "weight"), ("--regularizer", "l2sp:weight=-1", "weight"),
    ("--regularizer", ":weight=1", "no name"), ("--regularizer", "l2sp:weight", "key=value"),
    ("--regularizer", "ewc", "source"), ("--source-data", "digitz", "digitz"),
]:
    case(f"finetune-flag{flag}={value}", [*FT, *FT_SRC, flag, value, "--out", "{out}"], frag)
for override, frag in [
    ("train.lr=-1", "train.lr"), ("train.lr=abc", "train.lr"), ("train.batch_size=0", "batch_size"),
    ("train.device=cuda", "cuda"), ("train.device=tpu", "tpu"), ("train.epochz=3", "train.epochz"),
    ("data.val_fraction=1.5", "val_fraction"), ("train.lr=[1", "not valid YAML"), ("trainlr", "key=value"),
    ("=3", "empty key"), ("train..lr=1", "empty key"), ("seeds.x=1", "seeds"),
    ("model.kwargs.trust_remote_code=true", "trust_remote_code"), ("transfer.shape_mismatch=guess", "slice"),
    ("train.patience=-1", "patience"), ("train.grad_clip=-1", "grad_clip"),
    ("train.label_smoothing=2", "label_smoothing"), ("model.kwargs.hidden=[0]", "hidden"),
]:
    case(f"finetune-override-{override}", [*FT, *FT_SRC, override, "--out", "{out}"], frag)
for name, frag in [
    ("c_invalid", "not valid YAML"), ("c_list", "mapping"), ("c_scalar", "mapping"),
    ("c_unknown", "unknown key 'trian'"), ("c_types", "train.epochs"), ("c_negative", "train.lr"),
    ("c_strategy", "strategy"), ("c_seeds_empty", "seeds"), ("c_trust", "trust_remote_code"),
    ("c_data_section", "data"), ("c_shots_zero", "shots"), ("c_latin1", "UTF-8"),
    ("c_missing", "missing.yaml"),
]:
    case(f"finetune-config-{name}", ["finetune", "--config", f"{{{name}}}", *FT_SRC, "--out", "{out}"], frag)
case("finetune-out-is-file", [*FT, *FT_SRC, "--out", "{file}"], "is a file")
case("finetune-out-has-results", [*FT, *FT_SRC, "--out", "{done}"], "already holds results")
case("finetune-out-resume-other-shots", ["finetune", *FT_SRC, "--data", "digits", "--shots", "3", "--epochs",
                                         "1", "--strategy", "linear_probe", "data.val_fraction=0.2",
                                         "--out", "{done}", "--resume"], "data.shots: 2 -> 3")
case("finetune-out-resume-other-data", ["finetune", *FT_SRC, "--data", "digits", "--shots", "2", "--epochs",
                                        "1", "--strategy", "linear_probe", "data.val_fraction=0.25",
                                        "--out", "{done}", "--resume"], "data.sha256")
case("finetune-out-resume-and-overwrite", [*FT, *FT_SRC, "--out", "{done}", "--resume", "--overwrite"],
     "contradict")
case("finetune-out-too-long", [*FT, *FT_SRC, "--out", "{world}/" + "x" * 300], "cannot write")
case("finetune-out-in-proc", [*FT, *FT_SRC, "--out", "/proc/transferkit-test/out"], "cannot write")
case("finetune-out-under-file", [*FT, *FT_SRC, "--out", "{file}/sub"], "{file}")
case("finetune-out-null-byte", [*FT, *FT_SRC, "--out", "{world}/a\x00b"], "null byte")
case("evaluate-data-null-byte", [*EV, "{world}/a\x00b.csv"], "null byte")
case("inspect-null-byte", ["inspect", "{world}/a\x00b"], "does not exist")
case("finetune-overwrite-bad-data", [*FT, *FT_SRC, "--data", "{d_csv_nan}", "--out", "{done}", "--overwrite"],
     "non-finite")

# ---- distill
for name in ("m_badjson", "m_nan_weights", "m_trust", "w_pickled_pt", "m_empty"):
    case(f"distill-teacher-{name}", [*DI, "--teacher", f"{{{name}}}", "--out", "{out}"],
         {**MODEL_VARIANTS, **WEIGHT_FILES}[name])
for spec, frag in [
    ("kd:weight=[1,2]", "weight"), ("cross_entropy:label_smoothing=abc", "label_smoothing"),
    ("kd:temperature=abc", "temperature"), ("kd:temperature=0", "temperature"), ("nosuch", "nosuch"),
    ("kd:bogus=1", "bogus"), ("hint:student_layer=backbone.nosuch", "backbone.nosuch"),
    ("kd:weight=-1", "weight"), ("", "no name"),
]:
    case(f"distill-method-{spec or 'empty'}", [*DI, "-m", spec, "--out", "{out}"], frag)
for student, frag in [("narrow:abc", "narrow"), ("narrow:0", "factor"), ("nosuch", "nosuch"),
                      ("{m_badjson}", "not valid JSON")]:
    case(f"distill-student-{student}", [*DI, "--student", student, "--out", "{out}"], frag)
case("distill-no-teacher", ["distill", "--data", "digits", "--out", "{out}"], "teacher")
case("distill-data-stray", [*DI, "--data", "{d_stray}", "--out", "{out}"], "99")
case("distill-out-file", [*DI, "--out", "{file}"], "is a file")
case("distill-out-has-results", [*DI, "--out", "{done}"], "already holds results")
case("distill-device", [*DI, "train.device=cuda:3", "--out", "{out}"], "cuda")

# ---- adapt
for args, frag in [
    (["--source-data", "digitz"], "digitz"), (["--target-data", "{d_csv_latin1}"], "UTF-8"),
    (["-m", "nosuch"], "nosuch"), (["-m", "coral:weight=abc"], "weight"), (["-m", "kd"], "does not adapt"),
    (["-m", "dann:weight=abc"], "weight"), (["--weights", "abc"], "weights"),
    (["--weights", "-1"], "weights"),
    (["--select", "bogus"], "select"), (["--image-size", "2"], "image_size"),
    (["--image-size", "abc"], "--image-size"), (["--target-data", "{d_12class}"], "classes"),
    (["--target-data", "{d_images_rgb}"], "channel"), (["--epochs", "0"], "epochs"),
    (["--source", "{m_trunc_weights}"], "safetensors"), (["train.device=mps"], "mps"),
    (["--source-data", "{d_nan_npz}"], "non-finite"), (["--out", "{file}"], "is a file"),
    (["--out", "{done}"], "already holds results"), (["source_only=false", "weights=[]"], "weights"),
]:
    argv = [*AD, *args] + ([] if "--out" in args else ["--out", "{out}"])
    case(f"adapt-{'-'.join(a.strip('{}-') for a in args)[:50]}", argv, frag)

# ---- evaluate
for name, frag in MODEL_VARIANTS.items():
    case(f"evaluate-model-{name}", ["evaluate", f"{{{name}}}", "--data", "digits"], frag)
for name in WEIGHT_FILES:  # evaluate has no --arch: a bare weights file can't be rebuilt
    frag = WEIGHT_FILES[name] if name in ("w_empty_safetensors", "w_pickled_pt") else "cannot tell the arch"
    case(f"evaluate-model-{name}", ["evaluate", f"{{{name}}}", "--data", "digits"], frag)
for name, frag in DATA_VARIANTS.items():
    case(f"evaluate-data-{name}", [*EV, f"{{{name}}}"], frag)
case("evaluate-12-classes-on-10", [*EV, "{d_12class}"], "12 classes")
case("evaluate-split", [*EV, "digits", "--split", "bogus"], "--split")
case("evaluate-no-data", ["evaluate", "{good}"], "--data")
case("evaluate-missing-model", ["evaluate", "{world}/nothing", "--data", "digits"], "nothing")
case("evaluate-shape", ["evaluate", "{good}", "--data", "{d_images_rgb}"], "192")

# ---- inspect
for name in ("m_badjson", "m_kwargs_list", "m_nan_weights", "m_timm_payload", "m_trust", "m_arch_custom",
             "m_no_weights", "w_pickled_pt", "w_garbage_safetensors", "w_bare_safetensors"):
    case(f"inspect-{name}", ["inspect", f"{{{name}}}", *(["--arch", "mlp"] if name.startswith("w_") else [])],
         {**MODEL_VARIANTS, **WEIGHT_FILES, "w_bare_safetensors": "do not fit"}[name])
for shape, frag in [("0", "--input-shape"), ("-1,8,8", "--input-shape"), ("abc", "--input-shape"),
                    ("1,2,3,4,5", "--input-shape"), (",", "--input-shape"), ("3,8,8", "shape")]:
    case(f"inspect-input-shape-{shape}", ["inspect", "{good}", "--input-shape", shape], frag)
case("inspect-num-classes-0", ["inspect", "mlp", "--num-classes", "0"], "num_classes")
case("inspect-arch-unknown", ["inspect", "{w_bare_safetensors}", "--arch", "nosuch"], "nosuch")
case("inspect-target-bad", ["inspect", "{good}", "--target", "{m_badjson}"], "not valid JSON")
case("inspect-hub-empty", ["inspect", "timm:"], "timm")
case("rank-hub-no-arch", ["rank", "--candidates", "timm:nosuchnet", "--no-pretrained", "--data", "digits"],
     "nosuchnet")

# ---- rank
for name in ("m_badjson", "m_nan_weights", "w_pickled_pt", "m_trust"):
    case(f"rank-candidate-{name}", [*RK, f"{{{name}}}"], {**MODEL_VARIANTS, **WEIGHT_FILES}[name])
for args, frag in [
    (["{good}", "--scores", "bogus"], "bogus"), (["{good}", "--shots", "0"], "shots"),
    (["{good}", "--out", "{world}/rank.txt"], ".json or .csv"), (["{good}", "--out", "{file}"], ".json"),
    (["{good}", "--candidates", "{good}"], "repeats"), (["{good}", "--batch-size", "0"], "batch"),
    (["{good}", "--data", "{d_csv_nan}"], "non-finite"), (["{good}", "--scores", ""], "scores"),
]:
    case(f"rank-{'-'.join(a.strip('{}-') for a in args)[:50]}", [*RK, *args], frag)

# ---- grow
for args, frag in [
    (["--widen", "backbone.nosuch=40"], "nosuch"), (["--widen", "backbone.fc1:40"], "LAYER=WIDTH"),
    (["--widen", "backbone.fc1=abc"], "LAYER=WIDTH"), (["--widen", "backbone.fc1=8"], "8"),
    (["--deepen", "backbone.nosuch"], "nosuch"), ([], "nothing to do"), (["--noise", "-1", "--widen",
                                                                           "backbone.fc1=40"], "noise"),
    (["--widen", "backbone.fc1=40", "--out", "{done}"], "already holds"),
    (["--widen", "backbone.fc1=40", "--out", "{file}"], "is a file"),
]:
    argv = [*GR, *args] + ([] if "--out" in args else ["--out", "{out}"])
    case(f"grow-{'-'.join(a.strip('{}-') for a in args)[:50]}", argv, frag)
for name in ("m_badjson", "m_timm_payload", "w_pickled_pt"):
    case(f"grow-model-{name}", ["grow", f"{{{name}}}", "--widen", "backbone.fc1=40", "--out", "{out}"],
         {**MODEL_VARIANTS, **WEIGHT_FILES}[name])

# ---- validate
for name, frag in [
    ("c_invalid", "not valid YAML"), ("c_list", "mapping"), ("c_unknown", "unknown key 'trian'"),
    ("c_types", "train.epochs"), ("c_strategy", "strategy"), ("c_seeds_empty", "seeds"),
    ("c_latin1", "UTF-8"), ("c_missing", "missing.yaml"), ("c_shots_zero", "shots"),
]:
    case(f"validate-{name}", ["validate", f"{{{name}}}"], frag)
case("validate-override", ["validate", "{c_strategy}", "train.lr=abc"], "train.lr")

# ---- demo and the command line itself
for args, frag in [
    (["--seeds", "0"], "--seeds"), (["--shots", "0"], "--shots"), (["--epochs", "abc"], "--epochs"),
    (["--out", "{file}"], "is a file"), (["--fashion-root", "{world}/nothing"], "nothing"),
    (["--resume", "--overwrite"], "contradict"),
]:
    argv = ["demo", *args] + ([] if "--out" in args else ["--out", "{out}"])
    case(f"demo-{'-'.join(a.strip('{}-') for a in args)[:50]}", argv, frag)
for argv, frag in [
    (["nosuch"], "No such command"), (["finetune", "--bogus"], "--bogus"),
    (["finetune", "--shots"], "--shots"),
    (["inspect"], "model"), (["evaluate", "{good}", "--data"], "--data"), (["rank", "--data", "digits"],
                                                                          "--candidates"),
]:
    case(f"cli-{'-'.join(a.strip('{}-') for a in argv)}", argv, frag)


def _fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in args]


def _state(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_there_are_at_least_150_distinct_cases():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 150, len(ids)
    commands = {c[1][0] for c in CASES}
    assert commands >= {"finetune", "distill", "adapt", "evaluate", "inspect", "rank", "grow", "validate",
                        "demo"}


@pytest.mark.parametrize("case_id, args, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(world, tmp_path, case_id, args, fragments):
    paths = {**world, "out": str(tmp_path / "out"), "world": str(Path(world["good"]).parents[1])}
    watched = [Path(paths["out"]), Path(paths["done"]), Path(paths["file"]), Path(world["good"]).parent]
    before = [_state(p) for p in watched]
    result = run(*_fill(args, paths))
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert 1 <= len(err) <= 2, result.stderr
    assert err[-1].startswith("error: "), result.stderr  # a warning may come before the error
    assert "Traceback" not in result.output and not err[-1].startswith("error: unexpected"), result.output
    for frag in _fill(fragments, paths):
        assert frag in result.stderr, (frag, result.stderr)
    assert [_state(p) for p in watched] == before, "a refused call changed files"
    assert not os.path.exists(paths["marker"]), "a payload ran"
