"""The text tasks through a real tokenizer folder: a tiny byte-level BPE trained offline by the test on
its own text (the `tokenizers` library), wrapped as transformers.PreTrainedTokenizerFast and saved, then
loaded by the tasks' own AutoTokenizer.from_pretrained path: ids round-trip, the tasks' vocabulary is
the tokenizer's, their ids are the tokenizer's ids of the texts, and cells run on a tiny GPT-2 whose
vocabulary is the tokenizer's."""

import math
from dataclasses import replace

import pytest
import torch

from raysweep import experiment as E
from raysweep import store
from raysweep.cell import run_cell
from raysweep.methods import MethodOptions, ensemble
from raysweep.models.lora import LoRA
from raysweep.tasks import text_classification
from raysweep.tasks.text import Text
from raysweep.tasks.text_classification import PAD, TextClassification, write_synthetic_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = E.Train(epochs=1, batch_size=16, lr=1e-2)
EOS = "<|endoftext|>"
SENTENCE = "the quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A byte-level BPE (so every string encodes, and decodes back exactly) with one special token,
    the end of text, trained on the words of the test corpora."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tc = text_classification
    bpe.train_from_iterator([" ".join(tc.POSITIVE + tc.NEGATIVE + tc.FILLER + tc.OTHER_DOMAIN), SENTENCE] * 20, trainer)
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_folder)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tokenizer):
    """A tiny GPT-2 over the tokenizer's vocabulary, its end of text the tokenizer's (the pad id LoRA uses)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2-bpe")
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def test_the_tokenizer_round_trips_and_merges(tokenizer):
    assert 256 < len(tokenizer) <= 300 and tokenizer.eos_token_id is not None
    for text in (SENTENCE, "def lambda(): return None  # naïve émigré — 42\n\ttabs"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer(SENTENCE)["input_ids"]) < 0.75 * len(SENTENCE.encode())  # merges, not bytes


def test_text_classification_with_a_tokenizer_folder_runs_an_ensemble_cell(tokenizer_folder, tokenizer, pretrained,
                                                                          tmp_path):
    from datasets import load_dataset

    source, other = write_synthetic_corpus(tmp_path / "corpus", rows=60)
    task = TextClassification(source=source, ood_source=other, max_length=16, tokenizer=tokenizer_folder)
    assert task.vocab_size == len(tokenizer)
    data = task.load(40, 0, ["other_domain"], 8)
    # Independent: the tokenizer's ids of every training text, right-padded with PAD.
    texts = load_dataset("csv", data_files=source.removeprefix("csv:"), split="train")["text"]
    encoded = {tuple(tokenizer(t, add_special_tokens=False)["input_ids"][:16]) for t in texts}
    for row in data.train_x:
        real = row[row != PAD].tolist()
        assert tuple(real) in encoded and (row[len(real):] == PAD).all()
    assert 0 <= int(data.train_x[data.train_x != PAD].min()) and int(data.train_x.max()) < len(tokenizer)

    e = E.Experiment(name="bpe-classification", task=task, model=LoRA(pretrained=pretrained),
                     grid=E.Grid(n=(40,), sizes=(2,), methods=("ensemble",), seeds=(0,),
                                 ood=("shuffled", "other_domain")),
                     train=TRAIN, eval=E.Eval(max_examples=12),
                     methods=MethodOptions(ensemble=ensemble.Options(members=2))).validate()
    (cell,) = E.cells(e)
    store.write_cell(tmp_path / "store", run_cell(cell, lambda rows: None))
    finals = store.load(tmp_path / "store").to_pandas()
    assert finals["status"].isin(store.DONE).all() and len(finals) == 3
    assert finals["total"].map(math.isfinite).all() and (finals["epistemic"] > 0).all()


def test_next_token_text_with_a_tokenizer_folder(tokenizer_folder, tokenizer, pretrained, tmp_path):
    lines = [SENTENCE * 3, "the lazy dog sleeps; the fox runs.", SENTENCE * 4] * 6
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    task = Text(source=f"text:{tmp_path / 'corpus.txt'}", context=8, tokenizer=tokenizer_folder)
    assert task.vocab_size == len(tokenizer)
    data = task.load(8 * 10, 0, ["python_code"], 16)
    assert data.n_classes == len(tokenizer)
    # Independent: the tokenizer's ids of the corpus (the lines rejoined); every training window of
    # context + 1 ids is the corpus's ids at a multiple of the context.
    ids = tokenizer("\n".join(lines))["input_ids"]
    assert tokenizer.decode(ids) == "\n".join(lines)
    windows = torch.cat([data.train_x, data.train_y[:, -1:]], 1)
    assert torch.equal(data.train_x[:, 1:], data.train_y[:, :-1]) and len(windows) == 10
    starts = {tuple(ids[i:i + 9]): i for i in range(0, len(ids) - 8, 8)}
    assert all(tuple(w.tolist()) in starts for w in windows)
    assert int(data.eval_sets["python_code"][0].max()) < len(tokenizer)

    e = E.Experiment(name="bpe-lm", task=task, model=LoRA(pretrained=pretrained, head="lm"),
                     grid=E.Grid(n=(8 * 10,), sizes=(2,), methods=("ensemble",), seeds=(0,), ood=("python_code",)),
                     train=TRAIN, eval=E.Eval(max_examples=32),
                     methods=MethodOptions(ensemble=ensemble.Options(members=2))).validate()
    (cell,) = E.cells(e)
    rows = run_cell(cell, lambda rows: None)
    assert len(rows) == 2 and all(r["status"] in store.DONE and math.isfinite(r["total"]) for r in rows)


@pytest.fixture(scope="module")
def byte_gpt2(tmp_path_factory):
    """A tiny GPT-2 over bytes (vocabulary 256): smaller than the tokenizer's ~300 ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2-bytes")
    GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=256, n_positions=64)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("head", ["classification", "lm"])
def test_a_tokenizer_the_model_cannot_embed_is_refused_before_any_cell_runs(tokenizer_folder, tokenizer, byte_gpt2,
                                                                          tmp_path, head):
    source, other = write_synthetic_corpus(tmp_path / "corpus", rows=60)
    (tmp_path / "corpus.txt").write_text(SENTENCE * 40)
    task = (TextClassification(source=source, max_length=16, tokenizer=tokenizer_folder) if head == "classification"
            else Text(source=f"text:{tmp_path / 'corpus.txt'}", context=8, tokenizer=tokenizer_folder))
    e = E.Experiment(name="mismatch", task=task, model=LoRA(pretrained=byte_gpt2, head=head),
                     grid=E.Grid(n=(40,), sizes=(2,), methods=("ensemble",), seeds=(0,)), train=TRAIN)
    with pytest.raises(E.ExperimentError, match=rf"vocabulary of {len(tokenizer)} .* has 256"):
        e.validate()
    replace(e, task=replace(task, tokenizer="")).validate()  # raw bytes: the model's own 256 ids
