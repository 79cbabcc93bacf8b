"""Next-token language modelling. N is counted in training tokens.

Offline default: byte-level modelling (vocabulary 256, no tokenizer to download) of CPython's own
English documentation topics (`pydoc_data.topics`), with CPython's Python source as the OOD set.
With internet access (or a local copy), any HF `datasets` text corpus and a `transformers`
tokenizer go through the same code:

    source="hf:wikitext:wikitext-103-raw-v1"     load_dataset("wikitext", "wikitext-103-raw-v1")
    source="hf:roneneldan/TinyStories"           load_dataset("roneneldan/TinyStories")
    source="text:/data/corpus/*.txt"             load_dataset("text", data_files=...)
    tokenizer="gpt2"                             AutoTokenizer.from_pretrained("gpt2")
"""

from __future__ import annotations

import functools
import glob
import sysconfig
from dataclasses import dataclass
from typing import ClassVar

import torch

from raysweep.tasks import hub
from raysweep.tasks.base import Task
from raysweep.tasks.data import CLASSIFICATION, TaskData, nested_subset

BYTE_VOCAB = 256
# Vocabulary sizes of common tokenizers, so --plan works offline for a corpus on the hub.
KNOWN_VOCAB = {"gpt2": 50257, "EleutherAI/gpt-neox-20b": 50277}


@dataclass(frozen=True)
class Text(Task):
    counts_tokens: ClassVar[bool] = True  # grid.n is a number of training tokens

    source: str = "pydoc"  # "pydoc", "hf:<dataset>[:<config>]" or "text:<glob of local text files>"
    tokenizer: str = ""  # "" = raw bytes; else a transformers tokenizer name or local folder
    context: int = 64  # tokens per training sequence
    test_fraction: float = 0.1  # the corpus tail held out for evaluation, fixed for every cell
    max_corpus_tokens: int = 50_000_000

    def available_train_size(self) -> int:
        return int(len(self._corpus()) * (1 - self.test_fraction)) - self.context

    def min_train_size(self) -> int:
        return self.context  # N counts tokens; a cell needs at least one whole sequence

    def min_train_size_reason(self) -> str:
        return "one sequence of task.context tokens"

    def ood_sets(self) -> tuple[str, ...]:
        return ("python_source",)

    def problems(self) -> str | None:
        if not (self.source == "pydoc" or self.source.startswith(("hf:", "text:"))):
            return f"task.source {self.source!r} is not one of: 'pydoc', 'hf:<dataset>[:<config>]', 'text:<glob>'"
        if self.context < 2:
            return f"task.context must be >= 2 tokens, got {self.context}"
        if not 0 < self.test_fraction < 0.5:
            return f"task.test_fraction must be in (0, 0.5), got {self.test_fraction}"
        return None

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB if not self.tokenizer else len(_tokenizer(self.tokenizer))

    def plan_dims(self, max_eval: int, n_ood: int) -> tuple[int, int, int, int]:
        """(context, vocabulary, tokens per sequence, evaluation sequences) without loading the corpus."""
        vocab = BYTE_VOCAB if not self.tokenizer else KNOWN_VOCAB.get(self.tokenizer) or self.vocab_size
        return self.context, vocab, self.context, max(1, max_eval // self.context) * (1 + n_ood)

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        corpus = self._corpus()
        split = int(len(corpus) * (1 - self.test_fraction))
        train_seqs = _sequences(corpus[:split], self.context)
        chosen = train_seqs[nested_subset(len(train_seqs), n // self.context, seed)]
        test = _sequences(corpus[split:], self.context)[: max(1, max_eval // self.context)]
        eval_sets = {"test": (test[:, :-1], test[:, 1:])}
        if "python_source" in ood:
            source = _sequences(self._encode(_python_source(len(corpus) - split)), self.context)[: len(test)]
            eval_sets["python_source"] = (source[:, :-1], source[:, 1:])
        return TaskData(kind=CLASSIFICATION, train_x=chosen[:, :-1], train_y=chosen[:, 1:], eval_sets=eval_sets,
                        n_classes=self.vocab_size)

    def _corpus(self) -> torch.Tensor:
        return _load_corpus(self.source, self.tokenizer, self.max_corpus_tokens)

    def _encode(self, text: str) -> torch.Tensor:
        return _encode(text, self.tokenizer)


@functools.lru_cache(maxsize=4)
def _load_corpus(source: str, tokenizer: str, max_tokens: int) -> torch.Tensor:
    if source == "pydoc":
        from pydoc_data.topics import topics  # ships with CPython: no download

        text = "\n\n".join(topics[key] for key in sorted(topics))
    else:
        text = "\n".join(_dataset_texts(source, max_tokens))
    return _encode(text, tokenizer)[:max_tokens]


def _dataset_texts(source: str, max_chars: int):
    """Text of an HF dataset (or local text files read by `datasets`), up to about max_chars."""
    kind, _, rest = source.partition(":")
    if kind == "text":
        dataset = hub.load_split("text", None, "train", data_files=rest)
    else:
        name, _, config = rest.partition(":")
        dataset = hub.load_split(name, config or None, "train")
    total = 0
    for row in dataset:
        yield row["text"]
        total += len(row["text"])
        if total >= max_chars:
            return


def _encode(text: str, tokenizer: str) -> torch.Tensor:
    if not tokenizer:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    return torch.tensor(_tokenizer(tokenizer)(text)["input_ids"], dtype=torch.long)


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _sequences(tokens: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping windows of context + 1 tokens: inputs are [:-1], next-token targets [1:]."""
    count = (len(tokens) - 1) // context
    return torch.stack([tokens[i * context: i * context + context + 1] for i in range(count)])


def _python_source(chars: int) -> str:
    """CPython's standard-library source: a different text domain, on every machine with Python."""
    parts, total = [], 0
    for path in sorted(glob.glob(f"{sysconfig.get_paths()['stdlib']}/*.py")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            parts.append(handle.read())
        total += len(parts[-1])
        if total >= chars:
            break
    return "\n".join(parts)[:chars]
