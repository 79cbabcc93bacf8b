"""Laplace-LoRA with KFAC curvature (raysweep.training.kfac) against independent computations: the full
GGN block of one linear map from torch.func Jacobians (KFAC is exact for one example at one position),
the covariance of its draws against the closed-form (G ⊗ A + αI)⁻¹, the marginal-likelihood α against a
dense log-determinant, and cells end to end on a tiny GPT-2 saved by the test."""

import math

import pytest
import torch
from torch import nn

from raysweep import experiment as E
from raysweep import store
from raysweep.cell import run_cell
from raysweep.methods import METHODS, MethodOptions, lora_laplace
from raysweep.methods.laplace import LOG_ALPHA_RANGE
from raysweep.models.lora import LoRA
from raysweep.tasks.text import Text
from raysweep.tasks.text_classification import PAD, TextClassification, write_synthetic_corpus
from raysweep.training import kfac

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = E.Train(epochs=2, batch_size=16, lr=1e-2)
RANK = 2
CLASSES = 3


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
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


def random_network(pretrained, length=8):
    """A float64 LoRA network with every trainable parameter random (B is 0 at peft's initialisation,
    which would make every lora_A's output gradient 0)."""
    torch.manual_seed(1)
    network = LoRA(pretrained=pretrained, rank=RANK).build(length, CLASSES).double().eval()
    with torch.no_grad():
        for p in network.trainable().values():
            p.normal_(std=0.5)
    return network


def exact_ggn_block(network, module_name, x):
    """Jᵀ Λ J summed over the examples of x, for one map's row-major flattened weight: Jacobians by torch.func."""
    name = f"{module_name}.weight"
    weight = network.trainable()[name].detach()

    def logits_of(flat):  # tie_weights=False: the head is reachable twice, and tied swaps do not restore it
        return torch.func.functional_call(network, {name: flat.reshape(weight.shape)}, (x,), tie_weights=False)

    jacobian = torch.func.jacrev(logits_of)(weight.reshape(-1))  # (N, C, P)
    probs = logits_of(weight.reshape(-1)).detach().softmax(-1)
    lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jacobian, lam, jacobian)


def relative_difference(approx, exact):
    return ((approx - exact).abs().max() / exact.abs().max()).item()


def test_kfac_is_the_exact_ggn_block_for_one_example_at_one_position(pretrained):
    network = random_network(pretrained)
    objectives = lora_laplace.label_objectives("ggn", 0, "cpu")
    x, y = torch.tensor([[17]]), torch.tensor([1])  # one example, one token: every map sees one position
    blocks = kfac.factors(network, x, y, objectives)
    assert len(blocks) == 2 * 2 + 1  # lora_A and lora_B in each of 2 layers, and the head
    worst = 0.0
    for module_name, (a, g) in blocks.items():
        exact = exact_ggn_block(network, module_name, x)
        assert exact.abs().max() > 1e-6, module_name  # not trivially 0
        worst = max(worst, relative_difference(torch.kron(g, a), exact))
    assert worst < 1e-10, worst

    # The head reads only the last real token: with padding and several tokens its block stays exact.
    x = torch.tensor([[5, 9, 33, 70, PAD, PAD]])
    head = next(n for n in blocks if n.endswith("score"))
    a, g = kfac.factors(network, x, y, objectives)[head]
    assert relative_difference(torch.kron(g, a), exact_ggn_block(network, head, x)) < 1e-10


def test_kfac_takes_a_linear_bias_as_the_last_column_and_refuses_loose_parameters():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, CLASSES)).double()
    network[0].requires_grad_(False)
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.tensor([0])
    a, g = kfac.factors(network, x, y, lora_laplace.label_objectives("ggn", 0, "cpu"))["2"]
    names = ["2.weight", "2.bias"]
    flat = torch.cat([network[2].weight, network[2].bias[:, None]], 1).detach()  # [W | b], row-major

    def logits_of(theta):
        w = theta.reshape(flat.shape)
        return torch.func.functional_call(network, dict(zip(names, (w[:, :-1], w[:, -1]))), (x,))

    jacobian = torch.func.jacrev(logits_of)(flat.reshape(-1))  # (1, C, P)
    probs = logits_of(flat.reshape(-1)).detach().softmax(-1)
    lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    exact = torch.einsum("ncp,ncd,ndq->pq", jacobian, lam, jacobian)
    assert relative_difference(torch.kron(g, a), exact) < 1e-10

    network[0].bias.requires_grad_(True)  # a bias whose weight is frozen has no Kronecker block
    with pytest.raises(ValueError, match="these trainable parameters are not one: 0.bias"):
        kfac.linear_maps(network)


def test_kfac_draws_have_the_covariance_of_the_inverse_precision():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)  # [W | b]: 2 x 4, 8 parameters
    a, g = torch.randn(4, 6, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    a, g = a @ a.T, g @ g.T  # PSD factors, not diagonal
    block, alpha, draws = kfac.Block.of("layer", layer, a, g), 0.7, 40_000
    mean = {"layer.weight": torch.zeros(2, 3, dtype=torch.float64), "layer.bias": torch.zeros(2, dtype=torch.float64)}
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(draws):
        state = block.draw(mean, alpha, generator)
        samples.append(torch.cat([state["layer.weight"], state["layer.bias"][:, None]], 1).reshape(-1))
    empirical = torch.stack(samples).T.cov()
    exact = torch.linalg.inv(torch.kron(g, a) + alpha * torch.eye(8, dtype=torch.float64))
    # 40,000 draws: the entries' standard errors are about sqrt(2 / 40,000) = 0.7% of the variances
    assert relative_difference(empirical, exact) < 0.03
    torch.testing.assert_close(block.eigenvalues().sort().values,
                               torch.linalg.eigvalsh(torch.kron(g, a)).clamp_min(0), rtol=1e-8, atol=1e-8)


def test_marglik_alpha_under_kfac_maximises_the_evidence_with_a_dense_log_determinant(pretrained, corpus):
    source, other = corpus
    data = TextClassification(source=source, ood_source=other, max_length=24).load(24, 0, [], 8)
    posterior = METHODS["lora_laplace"].fit(data, LoRA(pretrained=pretrained, rank=RANK),
                                            lora_laplace.Options(structure="kfac", samples=2), TRAIN, 0,
                                            lambda *_: None)
    alpha = posterior.alpha
    assert math.isfinite(alpha) and math.exp(LOG_ALPHA_RANGE[0]) < alpha < math.exp(LOG_ALPHA_RANGE[1])
    assert posterior.variance is None and len(posterior.blocks) == 5
    # The evidence's α-dependent part with log det(G ⊗ A + αI) formed densely, block by block.
    def dense(values, vectors):
        return (vectors * values) @ vectors.T

    hessians = [torch.kron(dense(b.values_g, b.vectors_g), dense(b.values_a, b.vectors_a)) for b in posterior.blocks]
    square_norm = sum((m.double() ** 2).sum().item() for m in posterior.mean.values())
    size = sum(len(h) for h in hessians)

    def evidence(a):
        log_det = sum(torch.linalg.slogdet(h + a * torch.eye(len(h), dtype=h.dtype)).logabsdet.item() for h in hessians)
        return 0.5 * size * math.log(a) - 0.5 * a * square_norm - 0.5 * log_det

    assert size == sum(m.numel() for m in posterior.mean.values())
    assert evidence(alpha) >= max(evidence(alpha * 1.05), evidence(alpha / 1.05))


def test_kfac_cells_end_to_end_give_finite_uncertainty_with_positive_eu(pretrained, corpus, tmp_path):
    source, other = corpus
    e = E.Experiment(name="kfac-test", task=TextClassification(source=source, ood_source=other, max_length=32),
                     model=LoRA(pretrained=pretrained),
                     grid=E.Grid(n=(40,), sizes=(RANK,), methods=("lora_laplace",), seeds=(0,),
                                 ood=("shuffled", "other_domain")),
                     train=TRAIN, eval=E.Eval(max_examples=16),
                     methods=MethodOptions(lora_laplace=lora_laplace.Options(structure="kfac", samples=6))).validate()
    (cell,) = E.cells(e)
    store.write_cell(tmp_path, run_cell(cell, lambda rows: None))
    finals = store.load(tmp_path).to_pandas()
    assert finals["status"].isin(store.DONE).all() and len(finals) == 3
    for key in ("total", "aleatoric", "epistemic"):
        assert finals[key].map(math.isfinite).all()
    assert (finals["epistemic"] > 0).all()

    # The lm head: sampled labels at every token (curvature='mc'), KFAC over the adapters only.
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    task = Text(source=f"text:{tmp_path / 'corpus.txt'}", context=16)
    e = E.Experiment(name="lm-kfac", task=task, model=LoRA(pretrained=pretrained, head="lm"),
                     grid=E.Grid(n=(16 * 6,), sizes=(RANK,), methods=("lora_laplace",), seeds=(0,)), train=TRAIN,
                     eval=E.Eval(max_examples=64),
                     methods=MethodOptions(lora_laplace=lora_laplace.Options(curvature="mc", structure="kfac",
                                                                             samples=3))).validate()
    (cell,) = E.cells(e)
    (row,) = run_cell(cell, lambda rows: None)
    assert row["status"] in store.DONE and math.isfinite(row["total"]) and row["epistemic"] > 0


def test_structure_is_validated():
    assert lora_laplace.Options(structure="kfac").problems() is None
    assert lora_laplace.Options(structure="full").problems() == (
        "methods.lora_laplace.structure must be one of diag, kfac, got 'full'")
