"""Language and algorithmic tasks: real loading code run on small local files."""

import pytest
import torch

from raysweep import experiment as E
from raysweep.tasks.algorithmic import ModularArithmetic
from raysweep.tasks.data import IGNORE_INDEX
from raysweep.tasks.text import Text, _python_source


def test_byte_text_counts_n_in_tokens_and_nests_subsets():
    task = Text(context=32)
    small, large = task.load(32 * 10, 0, ["python_source"], 320), task.load(32 * 40, 0, ["python_source"], 320)
    assert small.train_x.shape == (10, 32) and small.n_classes == 256
    assert torch.equal(small.train_y[:, :-1], small.train_x[:, 1:])  # targets are the next bytes
    assert torch.equal(large.train_x[:10], small.train_x)
    test_x, test_y = small.eval_sets["test"]
    source_x, _ = small.eval_sets["python_source"]
    assert test_x.shape == source_x.shape == (10, 32)
    assert bytes(source_x[0].tolist()) == _python_source(1000).encode()[:32]  # CPython's own source


def test_hf_text_path_with_a_local_corpus_and_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(400)))
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train([str(corpus)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path / "tok")

    task = Text(source=f"text:{corpus}", tokenizer=str(tmp_path / "tok"), context=16)
    assert task.problems() is None and task.vocab_size == len(raw.get_vocab())
    data = task.load(16 * 8, 0, [], 64)
    assert data.train_x.shape == (8, 16) and int(data.train_x.max()) < task.vocab_size


def test_text_task_refuses_bad_sources_and_too_small_n(root):
    assert "task.source 'wiki' is not one of" in Text(source="wiki").problems()
    e = E.apply_overrides(E.load(root / "experiments" / "regression.py"), [])
    e = E.Experiment(name="t", task=Text(context=64), model=e.model,
                     grid=E.Grid(n=(32,), sizes=(8,), methods=("ensemble",)))
    with pytest.raises(E.ExperimentError,
                       match=r"grid.n value\(s\) \[32\] are below the 64 a cell of task 'text' needs"):
        e.validate()


def test_modular_arithmetic_scores_only_the_answer_and_its_ood_sets_differ():
    task = ModularArithmetic(modulus=13, n_test=20)
    data = task.load(50, 0, list(task.ood_sets()), 20)
    x, y = data.train_x, data.train_y
    assert x.shape == (50, 4) and (y[:, :3] == IGNORE_INDEX).all()
    torch.testing.assert_close(y[:, 3], (x[:, 0] + x[:, 2]) % 13)
    unseen_x, _ = data.eval_sets["unseen_operands"]
    assert (unseen_x[:, 0] >= int(13 * 0.8)).all()
    other_x, other_y = data.eval_sets["other_operation"]
    torch.testing.assert_close(other_y[:, 3], (other_x[:, 0] - other_x[:, 2]) % 13)
    train_pairs = {tuple(p) for p in x[:, [0, 2]].tolist()}
    test_pairs = {tuple(p) for p in data.eval_sets["test"][0][:, [0, 2]].tolist()}
    assert not train_pairs & test_pairs  # held-out equations are never trained on


def test_modular_arithmetic_refuses_bad_operations():
    assert ModularArithmetic(operation="pow").problems() == "task.operation 'pow' is not one of: add, sub, mul"
    assert "must differ" in ModularArithmetic(operation="add", ood_operation="add").problems()


def test_text_test_set_is_an_iid_sample_of_windows_and_python_code_is_code_only():
    from raysweep.tasks.text import _python_code, _sequences

    task = Text(context=32)
    data = task.load(32 * 50, 0, ["python_code"], 32 * 200)
    corpus = _sequences(task._corpus(), 32)
    positions = {bytes(w.tolist()): i for i, w in enumerate(corpus)}
    test_x, test_y = data.eval_sets["test"]
    where = torch.tensor([positions[bytes(torch.cat([x, y[-1:]]).tolist())] for x, y in zip(test_x, test_y)])
    # drawn from the whole corpus, not its alphabetical tail
    assert where.min() < len(corpus) * 0.2 and where.max() > len(corpus) * 0.8
    train_windows = {bytes(torch.cat([x, y[-1:]]).tolist()) for x, y in zip(data.train_x, data.train_y)}
    assert not train_windows & {bytes(torch.cat([x, y[-1:]]).tolist()) for x, y in zip(test_x, test_y)}
    code = _python_code(20_000)
    assert '"""' not in code and "\n#" not in code and "def " in code


def test_eval_hash_changes_with_the_contents_and_only_with_them():
    from raysweep.tasks.data import content_hash

    data = ModularArithmetic(modulus=13, n_test=20).load(50, 0, [], 20)
    again = ModularArithmetic(modulus=13, n_test=20).load(60, 1, [], 20)  # other N and seed: same test set
    assert content_hash(*data.eval_sets["test"]) == content_hash(*again.eval_sets["test"])
    x, y = data.eval_sets["test"]
    assert content_hash(x, y) != content_hash(x.flip(0), y.flip(0)) != content_hash(x, None)
