"""Datasets: built-ins, files on disk, few-shot sampling and shape matching.

Every dataset is a :class:`TensorDataset` (float32 ``x`` in ``[0, 1]`` for images, int64 ``y``);
:func:`load_dataset` returns :class:`DataSplits` with a fixed test split and a seeded, stratified
validation split.
Text data is a :class:`TextDataset` (``texts``, int64 ``y``): ``load_dataset("20newsgroups")``,
``"tweets:<domain>"``, or :func:`load_text_file` for .csv / .tsv / .jsonl files.
"""

from transferkit.data.base import DataSplits, TensorDataset
from transferkit.data.builtin import DATASETS, available_datasets, load_dataset, select_classes
from transferkit.data.sampling import few_shot, match_shape, split_train_val, without_labels
from transferkit.data.sources import from_arrays, from_torch_dataset, read_idx
from transferkit.data.text import (
    TextDataset,
    load_text_file,
    load_tweets,
    read_text_file,
    tfidf_baseline,
)

__all__ = [
    "DATASETS",
    "DataSplits",
    "TensorDataset",
    "TextDataset",
    "available_datasets",
    "few_shot",
    "from_arrays",
    "from_torch_dataset",
    "load_dataset",
    "select_classes",
    "load_text_file",
    "load_tweets",
    "match_shape",
    "read_idx",
    "read_text_file",
    "split_train_val",
    "tfidf_baseline",
    "without_labels",
]
