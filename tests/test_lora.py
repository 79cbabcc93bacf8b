"""LoRA fine-tuning of a tiny pretrained GPT-2 (saved by the test, no hub): the text-classification
task on local files, LoRA ensembles and Laplace-LoRA cells end to end, the frozen base, and the
Laplace's diagonal posterior variance against an independent Jacobian and Hessian computation."""

import math

import pytest
import torch

from raysweep import experiment as E
from raysweep import store
from raysweep.cell import run_cell
from raysweep.methods import METHODS, MethodOptions, ensemble, lora_laplace
from raysweep.models.lora import LoRA
from raysweep.tasks.text import Text
from raysweep.tasks.text_classification import PAD, TextClassification, write_synthetic_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = E.Train(epochs=2, batch_size=16, lr=1e-2)
RANK = 2


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny GPT-2 over bytes (vocabulary 256), saved and reloaded as a pretrained model would be."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=256, n_positions=64,
                        bos_token_id=None, eos_token_id=None)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), rows=80)


def task_of(corpus, **fields):
    source, other = corpus
    return TextClassification(**{"source": source, "ood_source": other, "max_length": 32} | fields)


def saved_weights(folder):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder).state_dict()


def test_cells_of_lora_ensemble_and_laplace_lora_store_finite_uncertainty(pretrained, corpus, tmp_path):
    e = E.Experiment(name="finetune-test", task=task_of(corpus), model=LoRA(pretrained=pretrained),
                     grid=E.Grid(n=(40,), sizes=(RANK,), methods=("ensemble", "lora_laplace"), seeds=(0,),
                                 ood=("shuffled", "other_domain")),
                     train=TRAIN, eval=E.Eval(max_examples=16),
                     methods=MethodOptions(ensemble=ensemble.Options(members=2),
                                           lora_laplace=lora_laplace.Options(samples=6))).validate()
    for cell in E.cells(e):
        rows = run_cell(cell, lambda rows: None)
        store.write_cell(tmp_path, rows)
    finals = store.load(tmp_path).to_pandas()
    assert sorted(finals["split"].unique()) == ["other_domain", "shuffled", "test"]
    assert finals["status"].isin(store.DONE).all() and len(finals) == 6  # a tiny random base may be at chance
    for key in ("total", "aleatoric", "epistemic"):
        assert finals[key].map(math.isfinite).all()
    assert (finals["epistemic"] > 0).all()
    # P = trainable parameters: per layer A (r x 16) and B (48 x r) on c_attn, plus the (2 x 16) head.
    assert (finals["params"] == 2 * RANK * (16 + 48) + 2 * 16).all()


def test_laplace_lora_trains_only_the_adapters_and_its_variance_is_the_inverse_ggn_diagonal(pretrained, corpus):
    data = task_of(corpus).load(24, 0, [], 8)
    options = lora_laplace.Options(prior="fixed", prior_precision=3.0, samples=2)
    posterior = METHODS["lora_laplace"].fit(data, LoRA(pretrained=pretrained, rank=RANK), options, TRAIN, 0,
                                            lambda *_: None)
    network = posterior.network
    # The base equals the saved weights; only adapters (B starts at 0) and the new head moved.
    saved, frozen = saved_weights(pretrained), 0
    for name, value in network.named_parameters():
        if not value.requires_grad:
            key = name.replace("peft_model.base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, saved[key]), name
            frozen += 1
    assert frozen == len([k for k in saved if k != "lm_head.weight"])  # lm_head is tied to wte, not loaded
    assert all(posterior.mean[name].abs().sum() > 0 for name in posterior.mean if "lora_B" in name)

    # Independent: the full Jacobian of every training logit w.r.t. the flat trainable parameters.
    names = list(posterior.mean)
    shapes = [posterior.mean[n].shape for n in names]
    flat = torch.cat([posterior.mean[n].reshape(-1) for n in names]).double()

    def logits_of(theta):
        chunks = theta.split([math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return torch.func.functional_call(network, params, (data.train_x,))

    network.double()  # float64: the comparison is to rounding, not to float32 noise
    jacobian = torch.autograd.functional.jacobian(logits_of, flat)  # (N, C, P)
    probs = logits_of(flat).detach().softmax(-1)
    lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    ggn_diagonal = torch.einsum("ncp,ncd,ndp->p", jacobian, lam, jacobian)
    variance = torch.cat([posterior.variance[n].reshape(-1) for n in names]).double()
    torch.testing.assert_close(variance, 1 / (ggn_diagonal + 3.0), rtol=1e-4, atol=1e-7)

    # The head is linear in its weight, so there the GGN is the Hessian of the NLL itself.
    head = next(n for n in names if n.endswith("score.weight"))
    others = {n: posterior.mean[n].double() for n in names if n != head}

    def nll_of_head(weight):
        logits = torch.func.functional_call(network, {**others, head: weight}, (data.train_x,))
        return torch.nn.functional.cross_entropy(logits, data.train_y, reduction="sum")

    hessian = torch.autograd.functional.hessian(nll_of_head, posterior.mean[head].double())
    size = posterior.mean[head].numel()
    torch.testing.assert_close(posterior.variance[head].double().reshape(-1),
                               1 / (hessian.reshape(size, size).diagonal() + 3.0), rtol=1e-4, atol=1e-7)


def test_padding_never_counts(pretrained, corpus):
    """The same texts padded to 24 or to 48 tokens give the same logits."""
    short, long = task_of(corpus, max_length=24).load(30, 0, [], 4), task_of(corpus, max_length=48).load(30, 0, [], 4)
    whole = short.train_x[:, -1] == PAD  # texts that 24 tokens hold without truncation
    short_x, long_x = short.train_x[whole], long.train_x[whole]
    assert len(short_x) >= 3 and torch.equal(long_x[:, :24], short_x) and (long_x[:, 24:] == PAD).all()
    torch.manual_seed(0)
    network = LoRA(pretrained=pretrained, rank=RANK).build(48, 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(network(short_x), network(long_x))


def test_a_real_token_sharing_the_pad_id_still_counts(pretrained):
    """The byte model's config has no pad or eos id, so its pad id is 0, which is also a real token (NUL
    here; "!" in GPT-2's vocabulary): the logits are still those of the last real token by the mask."""
    torch.manual_seed(0)
    network = LoRA(pretrained=pretrained, rank=RANK).build(8, 2).eval()
    assert network.pad_id == 0
    base = network.peft_model.base_model.model
    with torch.no_grad():
        logits = network(torch.tensor([[5, 9, 0, PAD], [5, 9, PAD, PAD]]))
        hidden = base.transformer(input_ids=torch.tensor([[5, 9, 0]])).last_hidden_state  # (1, 3, 16)
        torch.testing.assert_close(logits[0], base.score(hidden[0, -1]))
    assert not torch.allclose(logits[0], logits[1])


def test_the_shuffled_set_permutes_each_texts_tokens_and_keeps_its_padding(corpus):
    data = task_of(corpus).load(8, 0, ["shuffled"], 10)
    test, shuffled = data.eval_sets["test"][0], data.eval_sets["shuffled"][0]
    assert torch.equal(test == PAD, shuffled == PAD)
    assert torch.equal(test.sort(1).values, shuffled.sort(1).values) and not torch.equal(test, shuffled)


def test_next_token_lora_on_the_text_task_with_sampled_fisher(pretrained, tmp_path):
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    task = Text(source=f"text:{tmp_path / 'corpus.txt'}", context=16)
    e = E.Experiment(name="lm-lora", task=task, model=LoRA(pretrained=pretrained, head="lm"),
                     grid=E.Grid(n=(16 * 6,), sizes=(RANK,), methods=("lora_laplace",), seeds=(0,)), train=TRAIN,
                     eval=E.Eval(max_examples=64),
                     methods=MethodOptions(lora_laplace=lora_laplace.Options(curvature="mc", samples=3))).validate()
    (cell,) = E.cells(e)
    (row,) = run_cell(cell, lambda rows: None)
    assert row["status"] in store.DONE and math.isfinite(row["total"]) and row["epistemic"] > 0
    data = task.load(16 * 2, 0, [], 32)
    with pytest.raises(ValueError, match="curvature='ggn' needs one backward pass per class.*use curvature='mc'"):
        METHODS["lora_laplace"].fit(data, LoRA(pretrained=pretrained, head="lm", rank=RANK),
                                    lora_laplace.Options(), E.Train(epochs=1), 0, lambda *_: None)


def test_clear_errors_for_models_tasks_and_sources(pretrained, corpus):
    def experiment(model, task, method="lora_laplace"):
        return E.Experiment(name="bad", task=task, model=model, grid=E.Grid(n=(40,), sizes=(2,), methods=(method,)))

    with pytest.raises(E.ExperimentError, match="lora_laplace puts its Gaussian on LoRA adapters: it needs model"):
        experiment(E.MODELS["mlp"](), E.TASKS["regression"]()).validate()
    with pytest.raises(E.ExperimentError, match="head='lm' needs a Text task, got TextClassification"):
        experiment(LoRA(pretrained=pretrained, head="lm"), task_of(corpus), "ensemble").validate()
    with pytest.raises(E.ExperimentError, match="model.head must be one of classification, lm, got 'seq'"):
        experiment(LoRA(pretrained=pretrained, head="seq"), task_of(corpus), "ensemble").validate()
    assert TextClassification(source="sst2").problems().startswith("task.source 'sst2' is not one of: 'hf:<dataset>")
    with pytest.raises(ValueError, match="source 'sst2' is not one of: 'hf:<dataset>"):
        TextClassification(source="sst2").load(4, 0, [], 4)
    with pytest.raises(ValueError, match="has no column 'sentence'; its columns: text, label"):
        TextClassification(source=corpus[0], text_column="sentence").load(4, 0, [], 4)
