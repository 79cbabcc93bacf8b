"""Text classification read through `datasets` (hub or local files). N counts training examples.

    source="csv:/data/reviews/*.csv"       load_dataset("csv", data_files=...)   (also json:, parquet:)
    source="hf:stanfordnlp/sst2"           load_dataset("stanfordnlp/sst2")      (test_split="validation")
    tokenizer="gpt2" or a local folder     AutoTokenizer.from_pretrained(...);  "" = raw UTF-8 bytes (vocab 256)

Inputs are token ids (N, max_length), truncated to max_length and right-padded with PAD = -1 ("no
token"). The attention mask is `x != PAD`: it travels inside the ids, because a posterior's
`predict(x)` receives nothing else; `extras["pad"]` names the value. Models replace PAD by their own
pad id and mask it out of attention and pooling (raysweep.models.lora).

Labels are integers, or strings mapped to their sorted order; n_classes counts the labels seen. The
test set is `test_split` when given, else the last `test_fraction` of a fixed (seed 0) shuffle of
the training split, the same for every cell.

OOD sets: "shuffled", the test texts with their tokens permuted (same tokens, no word order: needs no
extra data); "other_domain", the texts of `ood_source` (another dataset, same source syntax), offered
only when ood_source is set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from raysweep.tasks import hub
from raysweep.tasks.base import Task
from raysweep.tasks.data import CLASSIFICATION, TaskData, nested_subset

PAD = -1
LOCAL_BUILDERS = ("csv", "json", "parquet", "text")
BYTE_VOCAB = 256


@dataclass(frozen=True)
class TextClassification(Task):
    source: str = ""  # "<csv|json|parquet>:<glob>" or "hf:<dataset>[:<config>]"
    text_column: str = "text"
    label_column: str = "label"
    tokenizer: str = ""  # "" = raw bytes; else a transformers tokenizer name or local folder
    max_length: int = 64  # tokens per input (truncated / padded)
    test_fraction: float = 0.2  # held out of the training split when test_split is empty
    test_split: str = ""  # a split of the source used as the test set (e.g. "validation")
    ood_source: str = ""  # a second dataset (same syntax as source): the "other_domain" OOD set
    ood_text_column: str = ""  # its text column ("" = text_column)
    n_classes: int = 0  # 0: count the labels; > 0 lets --plan skip loading the data

    def problems(self) -> str | None:
        for field_name in ("source", "ood_source"):
            value = getattr(self, field_name)
            if (value or field_name == "source") and _parse(value) is None:
                return (f"task.{field_name} {value!r} is not one of: 'hf:<dataset>[:<config>]', "
                        f"{', '.join(repr(b + ':<glob>') for b in LOCAL_BUILDERS)}")
        if self.max_length < 2:
            return f"task.max_length must be >= 2 tokens, got {self.max_length}"
        if not self.test_split and not 0 < self.test_fraction < 1:
            return f"task.test_fraction must be in (0, 1), got {self.test_fraction}"
        if self.n_classes < 0:
            return f"task.n_classes must be >= 0 (0: counted from the data), got {self.n_classes}"
        return None

    def ood_sets(self) -> tuple[str, ...]:
        return ("shuffled", "other_domain") if self.ood_source else ("shuffled",)

    def available_train_size(self) -> int:
        return len(self._pools()[0][0])

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB if not self.tokenizer else len(_tokenizer(self.tokenizer))

    def plan_dims(self, max_eval: int, n_ood: int) -> tuple[int, int, int, int] | None:
        if not self.n_classes:
            return None  # the classes are only known from the data: --plan loads a sample
        return self.max_length, self.n_classes, self.max_length, max_eval * (1 + n_ood)

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        (train_x, train_y), (test_x, test_y), n_classes = self._pools()
        chosen = nested_subset(len(train_x), n, seed)
        test_x, test_y = test_x[:max_eval], test_y[:max_eval]
        eval_sets = {"test": (test_x, test_y)}
        if "shuffled" in ood:
            eval_sets["shuffled"] = (_shuffle_tokens(test_x), None)
        if "other_domain" in ood:
            column = self.ood_text_column or self.text_column
            texts = _texts(self.ood_source, "train", column, max_eval)
            eval_sets["other_domain"] = (_encode_all(texts, self.tokenizer, self.max_length), None)
        return TaskData(kind=CLASSIFICATION, train_x=train_x[chosen], train_y=train_y[chosen], eval_sets=eval_sets,
                        n_classes=self.n_classes or n_classes, extras={"pad": PAD})

    def _pools(self):
        return _load_pools(self.source, self.text_column, self.label_column, self.tokenizer, self.max_length,
                           self.test_fraction, self.test_split)


@functools.lru_cache(maxsize=4)
def _load_pools(source, text_column, label_column, tokenizer, max_length, test_fraction, test_split):
    """((train ids, labels), (test ids, labels), classes): the whole training pool and the fixed test set."""
    rows = _rows(source, "train", text_column, label_column)
    if test_split:
        test_rows = _rows(source, test_split, text_column, label_column)
    else:  # a fixed shuffle, not the file order: files are often sorted by label
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
        held = max(1, int(len(rows) * test_fraction))
        rows, test_rows = [rows[i] for i in order[held:]], [rows[i] for i in order[:held]]
    names = sorted({label for _, label in rows + test_rows})
    index = {name: i for i, name in enumerate(names)}

    def tensors(part):
        ids = _encode_all([text for text, _ in part], tokenizer, max_length)
        return ids, torch.tensor([index[label] for _, label in part], dtype=torch.long)

    return tensors(rows), tensors(test_rows), len(names)


def _parse(source: str) -> tuple[str, str | None, str | None] | None:
    """(path or builder, config, data_files) for hub.load_split, or None if the syntax is wrong."""
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        return None
    if kind == "hf":
        name, _, config = rest.partition(":")
        return name, config or None, None
    return (kind, None, rest) if kind in LOCAL_BUILDERS else None


def _split(source: str, split: str):
    if _parse(source) is None:
        raise ValueError(f"source {source!r} is not one of: 'hf:<dataset>[:<config>]', "
                         f"{', '.join(repr(b + ':<glob>') for b in LOCAL_BUILDERS)}")
    path, config, data_files = _parse(source)
    return hub.load_split(path, config, split, data_files=data_files)


def _rows(source: str, split: str, text_column: str, label_column: str) -> list[tuple[str, object]]:
    dataset = _split(source, split)
    for column in (text_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"dataset {source!r} split {split!r} has no column {column!r}; "
                             f"its columns: {', '.join(dataset.column_names)}")
    return list(zip(dataset[text_column], dataset[label_column]))


def _texts(source: str, split: str, column: str, limit: int) -> list[str]:
    dataset = _split(source, split)
    if column not in dataset.column_names:
        raise ValueError(f"dataset {source!r} has no column {column!r}; its columns: {', '.join(dataset.column_names)}")
    return dataset.select(range(min(limit, len(dataset))))[column]


def _encode_all(texts: list[str], tokenizer: str, max_length: int) -> torch.Tensor:
    """(len(texts), max_length) ids, truncated and right-padded with PAD; every text keeps >= 1 token."""
    ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = _encode(text, tokenizer)[:max_length] or [0]  # an empty text still has one position to pool
        ids[row, :len(tokens)] = torch.tensor(tokens)
    return ids


def _encode(text: str, tokenizer: str) -> list[int]:
    if not tokenizer:
        return list(text.encode("utf-8"))
    return _tokenizer(tokenizer)(text, add_special_tokens=False)["input_ids"]


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _shuffle_tokens(ids: torch.Tensor) -> torch.Tensor:
    """Each row's real tokens in a fixed random order; padding stays where it is."""
    generator = torch.Generator().manual_seed(0)
    out = ids.clone()
    for row in out:
        length = int((row != PAD).sum())
        row[:length] = row[:length][torch.randperm(length, generator=generator)]
    return out


# ---------------------------------------------------------------------------------------------
# A synthetic corpus for offline smoke runs and tests (no dataset ships with Python or the venv)

POSITIVE = ("good", "great", "fine", "lovely", "superb", "bright", "warm", "clever")
NEGATIVE = ("bad", "awful", "poor", "dull", "weak", "grim", "cold", "clumsy")
FILLER = ("the", "film", "was", "a", "plot", "and", "very", "story", "acting", "quite")
OTHER_DOMAIN = ("def", "return", "import", "self", "lambda", "yield", "class", "None", "42", "0x1f")


def write_synthetic_corpus(folder, rows: int = 400, seed: int = 0) -> tuple[str, str]:
    """Write a two-class "review" corpus (train.csv: text, label) and an other-domain corpus
    (other.csv: text, code-like words) into `folder`, once; returns the source strings
    ("csv:<path>") of both. A label is the majority sentiment of its words, 1 word in 6 flipped,
    so the classes overlap (aleatoric uncertainty is not zero)."""
    import csv
    import random
    from pathlib import Path

    folder = Path(folder).expanduser()
    train, other = folder / "train.csv", folder / "other.csv"
    if not (train.exists() and other.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        with open(train, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for _ in range(rows):
                label = rng.randrange(2)
                words = [rng.choice(POSITIVE if (label == 1) != (rng.random() < 1 / 6) else NEGATIVE) for _ in range(3)]
                words += rng.choices(FILLER, k=rng.randint(2, 5))
                rng.shuffle(words)
                writer.writerow([" ".join(words), label])
        with open(other, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text"])
            for _ in range(rows // 4):
                writer.writerow([" ".join(rng.choices(OTHER_DOMAIN, k=rng.randint(4, 8)))])
    return f"csv:{train}", f"csv:{other}"
