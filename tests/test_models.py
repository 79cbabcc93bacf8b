"""Image models: shapes, size knobs, dropout layers, stacked (vmap) training, and shape checks."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from raysweep import experiment as E
from raysweep.methods import METHODS, dropout, ensemble
from raysweep.models import MODELS, count_parameters
from raysweep.models.cnn import CNN
from raysweep.models.mlp import MLP
from raysweep.models.resnet import ResNet, WideResNet
from raysweep.models.vit import ViT
from raysweep.tasks.vision import Digits

# Small configs of every image family, and a second value of each one's size knob.
SMALL = {
    "cnn": (CNN(width=4), 8),
    "resnet": (ResNet(width=4, blocks=(1, 1)), 8),
    "wrn": (WideResNet(widen=1, depth=10), 2),
    "vit": (ViT(dim=16, depth=1, head_dim=8, patch=4, max_patches=64), 32),
}


@pytest.mark.parametrize("name", SMALL)
def test_image_models_take_any_image_size_and_grow_with_their_knob(name):
    model, bigger = SMALL[name]
    assert MODELS[name] is type(model) and model.problems() is None
    network = model.build(3, 10)
    assert isinstance(network, nn.Sequential) and isinstance(network[-1], nn.Linear)  # last-layer Laplace works
    assert network(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    larger = replace(model, **{model.size_knob: bigger}).build(3, 10)
    assert count_parameters(larger) > count_parameters(network)
    assert METHODS["laplace"].unsupported_model(model) is None


@pytest.mark.parametrize("name", SMALL)
def test_dropout_layers_only_when_asked(name):
    model, _ = SMALL[name]
    has_dropout = lambda m: any(isinstance(x, nn.Dropout) for x in m.modules())  # noqa: E731
    assert not has_dropout(model.build(3, 10)) and has_dropout(model.build(3, 10, dropout=0.1))
    assert METHODS["dropout"].unsupported_model(model) is None


def test_resnet18_and_wrn_16_4_have_their_usual_sizes():
    # GroupNorm has the same parameter count as BatchNorm's affine part: 11.17M as torchvision's CIFAR
    # ResNet-18 (3x3 stem), 2.75M as WRN-16-4.
    assert count_parameters(ResNet().build(3, 10)) == 11_173_962
    assert count_parameters(WideResNet(widen=4, depth=16).build(3, 10)) == 2_748_890


@pytest.mark.parametrize("name", SMALL)
def test_stacked_ensemble_training_runs_and_learns(name):
    model, _ = SMALL[name]
    torch.manual_seed(0)
    data = Digits(as_images=True).load(96, 0, ["rotated"], 64)
    if name == "vit":
        model = replace(model, patch=2, max_patches=16)
    losses = []
    posterior = METHODS["ensemble"].fit(data, model, ensemble.Options(members=2),
                                        E.Train(epochs=3, batch_size=32, lr=3e-3),
                             0, lambda epoch, loss: losses.append(loss))
    probs = posterior.predict(data.eval_sets["rotated"][0])
    assert probs.shape == (2, 64, 10) and torch.allclose(probs.sum(-1), torch.ones(2, 64))
    assert losses[-1] < losses[0]
    assert not torch.equal(probs[0], probs[1])  # members differ


def test_mc_dropout_on_an_image_model_gives_varying_samples():
    data = Digits(as_images=True).load(64, 0, [], 32)
    posterior = METHODS["dropout"].fit(data, CNN(width=4), dropout.Options(rate=0.3, samples=4),
                            E.Train(epochs=1, batch_size=32), 0, lambda *_: None)
    probs = posterior.predict(data.eval_sets["test"][0])
    assert probs.shape == (4, 32, 10) and not torch.equal(probs[0], probs[1])


def test_image_shapes_that_do_not_fit_are_refused_with_clear_messages():
    flat, images = Digits(), Digits(as_images=True)
    assert CNN().problems_with(images) is None
    message = CNN().problems_with(flat)
    assert "model CNN takes images (N, C, H, W), but task Digits(n_test=397, as_images=False" in message
    assert "gives flat vectors" in message
    assert "model WideResNet takes images" in WideResNet().problems_with(flat)
    assert ViT(patch=4, max_patches=4).problems_with(images) is None
    assert ViT(patch=3).problems_with(images) == (
        "images of 8x8 pixels do not split into model.patch=3 patches; use a patch size that divides both")
    assert ViT(patch=1, max_patches=16).problems_with(images) == (
        "images of 8x8 pixels make 64 patches of 1x1, more than model.max_patches=16; "
        "raise model.max_patches to 64 or the patch size")
    assert images.problems_with(MLP()) == (
        "task Digits gives images (1, 8, 8), but model MLP takes flat vectors; set task.as_images=False "
        "or use an image model (cnn, resnet, wrn, vit)")
    assert flat.problems_with(MLP()) is None and images.problems_with(CNN()) is None
    # Used directly, a model refuses what does not fit too.
    with pytest.raises(ValueError, match=r"make 64 patches of 1x1, more than model.max_patches=16"):
        ViT(patch=1, max_patches=16).build(1, 10)(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("model, message", [
    (CNN(stages=0), r"model.width and model.stages must be > 0, got width=32, stages=0"),
    (ResNet(blocks=(2, 0)), r"every model.blocks entry must be > 0"),
    (WideResNet(depth=12), r"model.depth must be 6·k \+ 4 with k >= 1 \(10, 16, 22, 28, 40, ...\), got 12"),
    (ViT(dim=40, head_dim=16), r"model.dim \(40\) must be a multiple of model.head_dim \(16\)"),
])
def test_bad_model_configs_are_refused(model, message):
    e = E.Experiment(name="t", task=Digits(as_images=True), model=model,
                     grid=E.Grid(n=(50,), sizes=(getattr(model, model.size_knob),), methods=("ensemble",)))
    with pytest.raises(E.ExperimentError, match=message):
        e.validate()


def test_experiment_validation_refuses_shapes_that_do_not_fit():
    grid = E.Grid(n=(50,), sizes=(8,), methods=("ensemble",))
    with pytest.raises(E.ExperimentError, match=r"model CNN takes images \(N, C, H, W\)"):
        E.Experiment(name="t", task=Digits(), model=CNN(), grid=grid).validate()
    with pytest.raises(E.ExperimentError, match=r"but model MLP takes flat vectors; set task.as_images=False"):
        E.Experiment(name="t", task=Digits(as_images=True), model=MLP(), grid=grid).validate()
    with pytest.raises(E.ExperimentError, match=r"more than model.max_patches=16"):
        E.Experiment(name="t", task=Digits(as_images=True), model=ViT(patch=1, max_patches=16),
                     grid=replace(grid, sizes=(16,))).validate()


def test_gpt_pretrained_path_loads_local_weights_and_counts_them_without_loading(tmp_path):
    """Fine-tuning studies start from from_pretrained(folder): the weights must be the saved ones, with
    the output layer untied into its own copy, and P counted on the meta device must match."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from raysweep.models import parameter_count
    from raysweep.models.gpt import GPT

    torch.manual_seed(0)
    saved = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    saved.save_pretrained(tmp_path / "tiny-gpt2")
    model = GPT(pretrained=str(tmp_path / "tiny-gpt2"))
    network = model.build(64, 256)

    ids = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(network(ids), saved.eval()(input_ids=ids).logits)
    head, embedding = network.model.lm_head.weight, network.model.transformer.wte.weight
    assert head.data_ptr() != embedding.data_ptr() and torch.equal(head, embedding)
    assert parameter_count(model, 64, 256) == count_parameters(network) == count_parameters(saved) + 256 * 32
    with pytest.raises(ValueError, match="has context 64 and vocabulary 256; the task needs context >= 128"):
        model.build(128, 256)
