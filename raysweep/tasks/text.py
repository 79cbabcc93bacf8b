"""Next-token language modelling. N is counted in training tokens.

Offline default: byte-level modelling (vocabulary 256, no tokenizer to download) of CPython's own
English documentation topics (`pydoc_data.topics`). The test set is an i.i.d. sample of the corpus's
windows (a fixed random test_fraction of them, the same for every cell). OOD sets: "python_code",
CPython's standard-library code with every docstring and comment removed (ast.unparse: code, not
English), and "python_source", the same files as they are (mostly docstrings and comments: near-OOD).
Both depend on the Python version; each row stores its evaluation set's content hash (eval_hash).
With internet access (or a local copy), any HF `datasets` text corpus and a `transformers`
tokenizer go through the same code:

    source="hf:wikitext:wikitext-103-raw-v1"     load_dataset("wikitext", "wikitext-103-raw-v1")
    source="hf:roneneldan/TinyStories"           load_dataset("roneneldan/TinyStories")
    source="text:/data/corpus/*.txt"             load_dataset("text", data_files=...)
    tokenizer="gpt2"                             AutoTokenizer.from_pretrained("gpt2")
"""

from __future__ import annotations

import ast
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
SPLIT_SEED = 12345  # fixes which windows are the test set, for every cell
# Vocabulary sizes of common tokenizers, so --plan works offline for a corpus on the hub.
KNOWN_VOCAB = {"gpt2": 50257, "EleutherAI/gpt-neox-20b": 50277}


@dataclass(frozen=True)
class Text(Task):
    counts_tokens: ClassVar[bool] = True  # grid.n is a number of training tokens

    source: str = "pydoc"  # "pydoc", "hf:<dataset>[:<config>]" or "text:<glob of local text files>"
    tokenizer: str = ""  # "" = raw bytes; else a transformers tokenizer name or local folder
    context: int = 64  # tokens per training sequence
    test_fraction: float = 0.1  # a fixed random share of the corpus's windows held out for evaluation
    max_corpus_tokens: int = 50_000_000

    def available_train_size(self) -> int:
        return len(self._split()[1]) * self.context

    def min_train_size(self) -> int:
        return self.context  # N counts tokens; a cell needs at least one whole sequence

    def min_train_size_reason(self) -> str:
        return "one sequence of task.context tokens"

    def ood_sets(self) -> tuple[str, ...]:
        return ("python_code", "python_source")

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
        test_all, train_seqs = self._split()
        chosen = train_seqs[nested_subset(len(train_seqs), n // self.context, seed)]
        test = test_all[: max(1, max_eval // self.context)]
        eval_sets = {"test": (test[:, :-1], test[:, 1:])}
        chars = 4 * len(test) * (self.context + 1)  # enough text for len(test) windows of any tokenizer
        for name, text in (("python_code", _python_code), ("python_source", _python_source)):
            if name in ood:
                windows = _sequences(self._encode(text(chars)), self.context)[: len(test)]
                eval_sets[name] = (windows[:, :-1], windows[:, 1:])
        return TaskData(kind=CLASSIFICATION, train_x=chosen[:, :-1], train_y=chosen[:, 1:], eval_sets=eval_sets,
                        n_classes=self.vocab_size)

    def _split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(test windows, training-pool windows): a fixed random test_fraction of the corpus's
        non-overlapping windows is the test set, so it is drawn from the training distribution."""
        windows = _sequences(self._corpus(), self.context)
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(SPLIT_SEED))
        held = max(1, int(len(windows) * self.test_fraction))
        return windows[order[:held]], windows[order[held:]]

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


def _python_code(chars: int) -> str:
    """CPython's standard-library modules as code only: parsed, every docstring dropped, written back
    with ast.unparse (which drops comments). Text that is code, unlike the documentation corpus."""
    parts, total = [], 0
    for path in sorted(glob.glob(f"{sysconfig.get_paths()['stdlib']}/*.py")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            try:
                tree = ast.parse(handle.read())
            except SyntaxError:
                continue
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        parts.append(ast.unparse(tree))
        total += len(parts[-1])
        if total >= chars:
            break
    return "\n".join(parts)[:chars]
