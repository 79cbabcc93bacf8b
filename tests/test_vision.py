"""Vision tasks: the HF `datasets` path run on small local datasets made here, digits as images,
augmentation, and the errors for bad names and too large N."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from raysweep import experiment as E
from raysweep import store
from raysweep.cell import run_cell
from raysweep.models.cnn import CNN
from raysweep.tasks import vision
from raysweep.tasks.vision import DATASETS, Digits, RandomCropFlip, Vision


def _images(rng, n, size=32, shift=0):
    from PIL import Image

    return [Image.fromarray(np.clip(rng.normal(100 + shift, 40, (size, size, 3)), 0, 255).astype(np.uint8))
            for _ in range(n)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A folder laid out like the hub: cifar10 as parquet files named by split (read by load_dataset),
    svhn as a save_to_disk folder (read by load_from_disk), each with its hub dataset's columns."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("vision")

    def table(n, image, label, shift=0):
        features = Features({image: Image(), label: Value("int64")})
        return Dataset.from_dict({image: _images(rng, n, shift=shift), label: (np.arange(n) % 10).tolist()},
                                 features=features)

    (folder / "cifar10").mkdir()
    table(300, "img", "label").to_parquet(str(folder / "cifar10" / "train.parquet"))
    table(80, "img", "label").to_parquet(str(folder / "cifar10" / "test.parquet"))
    DatasetDict(train=table(40, "image", "label"), test=table(50, "image", "label", shift=60)).save_to_disk(
        str(folder / "svhn"))
    return folder


def test_local_dataset_loads_through_the_hub_code_path(root):
    task = Vision(dataset="cifar10", root=str(root))
    assert task.problems() is None
    assert task.available_train_size() == 300 and task.image_shape == (3, 32, 32)
    assert task.ood_sets() == ("svhn", "noise")  # only the datasets present under root
    small, large = task.load(50, 0, ["svhn", "noise"], 64), task.load(200, 0, ["svhn", "noise"], 64)
    assert small.train_x.shape == (50, 3, 32, 32) and small.train_x.dtype == torch.float32
    assert small.input_dim == 3 and small.output_dim == 10 and small.train_y.dtype == torch.long
    assert torch.equal(large.train_x[:50], small.train_x)  # nested subsets
    assert torch.equal(large.eval_sets["test"][0], small.eval_sets["test"][0])  # fixed evaluation sets
    test_x, test_y = small.eval_sets["test"]
    assert test_x.shape == (64, 3, 32, 32) and test_y.shape == (64,)
    svhn_x, svhn_y = small.eval_sets["svhn"]
    assert svhn_x.shape == (50, 3, 32, 32) and svhn_y is None  # capped by the split's size
    assert small.eval_sets["noise"][0].shape == (64, 3, 32, 32)
    # Normalised per channel with the training statistics; the OOD set keeps its own shift.
    pixels = large.train_x.transpose(0, 1).flatten(1)  # (C, N·H·W)
    torch.testing.assert_close(pixels.mean(1), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(pixels.std(1), torch.ones(3), atol=0.03, rtol=0)
    assert svhn_x.mean() > 1.0
    flat = replace(task, flatten=True).load(50, 0, [], 64)
    assert flat.train_x.shape == (50, 3 * 32 * 32) and replace(task, flatten=True).image_shape is None


def test_hub_names_configs_and_splits_go_to_load_dataset(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or [])
    vision._load_split.cache_clear()
    try:
        for name in DATASETS:
            vision._load_split("", name, DATASETS[name].eval_split)
    finally:
        vision._load_split.cache_clear()
    assert calls == [
        (("uoft-cs/cifar10", None), {"split": "test"}),
        (("uoft-cs/cifar100", None), {"split": "test"}),
        (("ufldl-stanford/svhn", "cropped_digits"), {"split": "test"}),
        (("benjamin-paine/imagenet-1k-32x32", None), {"split": "validation"}),
    ]
    task = Vision(dataset="imagenet32")  # hub sizes are known without a download
    assert task.available_train_size() == 1_281_167 and task.image_shape == (3, 32, 32)
    assert task.ood_sets() == ("cifar10", "cifar100", "svhn", "noise")


def _experiment(task, n=(50,), ood=()):
    return E.Experiment(name="v", task=task, model=CNN(width=4), grid=E.Grid(n=n, sizes=(4,), methods=("ensemble",),
                                                                            seeds=(0,), ood=ood))


def test_bad_names_missing_folders_and_too_large_n_are_refused_before_training(root):
    with pytest.raises(E.ExperimentError, match=r"task.dataset 'cifar11' is not one of: cifar10, cifar100, svhn, "
                                                r"imagenet32"):
        _experiment(Vision(dataset="cifar11")).validate()
    with pytest.raises(E.ExperimentError, match=r"task.root '.*' has no folder 'cifar100': put the dataset there"):
        _experiment(Vision(dataset="cifar100", root=str(root))).validate()
    with pytest.raises(E.ExperimentError, match=r"unknown OOD set 'cifar100' for this task; allowed: svhn, noise"):
        _experiment(Vision(root=str(root)), ood=("cifar100",)).validate()
    with pytest.raises(E.ExperimentError, match=r"grid.n value\(s\) \[500\] exceed the 300 training examples task "
                                                r"'vision' has"):
        _experiment(Vision(root=str(root)), n=(50, 500)).validate()
    with pytest.raises(E.ExperimentError, match=r"grid.n value\(s\) \[60000\] exceed the 50000 training examples"):
        _experiment(Vision(dataset="cifar10"), n=(60_000,)).validate()  # the hub's size: no download
    with pytest.raises(ValueError, match=r"N=301 exceeds the 300 training images of 'cifar10'"):
        Vision(root=str(root)).load(301, 0, [], 10)


def test_a_dataset_without_the_expected_columns_is_refused(tmp_path):
    from datasets import Dataset, Features, Image, Value

    (tmp_path / "cifar100").mkdir()
    features = Features({"img": Image(), "label": Value("int64")})  # cifar100 has fine_label, not label
    for split in ("train", "test"):
        Dataset.from_dict({"img": _images(np.random.default_rng(1), 4), "label": [0, 1, 2, 3]},
                          features=features).to_parquet(str(tmp_path / "cifar100" / f"{split}.parquet"))
    with pytest.raises(ValueError,
                       match=r"'cifar100' has no label column 'fine_label'; its columns are \['img', 'label'\]"):
        Vision(dataset="cifar100", root=str(tmp_path), stats_images=4).load(2, 0, [], 2)


def test_a_cell_runs_end_to_end_on_local_images(root):
    e = _experiment(Vision(root=str(root)), n=(40, 80), ood=("svhn",))
    e = replace(e, train=E.Train(epochs=1, batch_size=32), eval=E.Eval(max_examples=40),
                methods=replace(e.methods, ensemble=replace(e.methods.ensemble, members=2))).validate()
    cell = E.cells(e)[0]
    rows = run_cell(cell, lambda rows: None)
    assert {r["split"] for r in rows} == {"test", "svhn"} and all(r["status"] in store.DONE for r in rows)
    assert rows[0]["params"] == sum(p.numel() for p in CNN(width=4).build(3, 10).parameters())


def test_digits_as_images_are_the_same_pixels():
    flat, images = (Digits().load(100, 0, ["rotated", "noise"], 50),
                    Digits(as_images=True).load(100, 0, ["rotated", "noise"], 50))
    assert images.train_x.shape == (100, 1, 8, 8) and images.input_dim == 1
    assert torch.equal(images.train_x.flatten(1), flat.train_x)
    for name in ("test", "rotated", "noise"):
        assert images.eval_sets[name][0].shape == (50, 1, 8, 8)
        assert torch.equal(images.eval_sets[name][0].flatten(1), flat.eval_sets[name][0])


def test_random_crop_and_flip_keep_shapes_and_pixels():
    x = torch.arange(2 * 3 * 2 * 8 * 8, dtype=torch.float32).reshape(2, 3, 2, 8, 8)  # (M, B, C, H, W)
    generator = torch.Generator().manual_seed(0)
    out = RandomCropFlip(padding=2)(x, generator)
    assert out.shape == x.shape
    unpadded = RandomCropFlip(padding=0)(x, generator).reshape(-1, 2, 8, 8)
    for image, original in zip(unpadded, x.reshape(-1, 2, 8, 8)):  # no padding: each image kept or mirrored
        assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
    flat_out, flat_in = out.reshape(-1, 2, 8, 8), x.reshape(-1, 2, 8, 8)
    for image, original in zip(flat_out, flat_in):  # every pixel is zero padding or one of the image's own
        values = set(image.unique().tolist()) - {0.0}
        assert values <= set(original.unique().tolist())
    assert not torch.equal(out, x)


def test_augmented_cells_train_on_crops_and_flips_and_evaluate_on_the_images(root):
    assert (Vision(augment=True, flatten=True).problems()
            == "task.augment crops and flips images: it needs task.flatten=False")
    task = Vision(root=str(root), augment=True)
    assert task.problems() is None
    assert isinstance(task.load(10, 0, [], 10).extras["augment"], RandomCropFlip)
    e = _experiment(task, n=(40,), ood=("svhn",))
    e = replace(e, train=E.Train(epochs=1, batch_size=32), eval=E.Eval(max_examples=40),
                methods=replace(e.methods, ensemble=replace(e.methods.ensemble, members=2))).validate()
    augmented = run_cell(E.cells(e)[0], lambda rows: None)
    again = run_cell(E.cells(e)[0], lambda rows: None)
    plain = run_cell(E.cells(replace(e, task=replace(task, augment=False)))[0], lambda rows: None)
    assert all(r["status"] in store.DONE for r in augmented)
    assert [r["total"] for r in augmented] == [r["total"] for r in again]  # the crops are seed-fixed
    assert [r["total"] for r in augmented] != [r["total"] for r in plain]


def test_held_out_digit_classes_are_never_trained_on_nor_tested_and_photos_are_not_digits():
    from sklearn.datasets import load_digits

    task = Digits(n_test=300, held_out_classes=(8, 9))
    data = task.load(task.available_train_size(), 0, ["held_out_classes", "photos"], 400)
    assert data.n_classes == 8 and int(data.train_y.max()) == 7 and int(data.eval_sets["test"][1].max()) == 7
    digits = load_digits()
    images = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    held = images[torch.isin(torch.tensor(digits.target), torch.tensor([8, 9]))]
    ood_x, _ = data.eval_sets["held_out_classes"]
    assert len(ood_x) == min(400, len(held)) and all((held == x).all(1).any() for x in ood_x)
    assert not any((ood_x == x).all(1).any() for x in data.train_x)  # no 8 or 9 in training
    photos, _ = data.eval_sets["photos"]
    assert photos.shape == (300, 64) and photos.min() == 0 and photos.max() == 1
    assert not any((images == p).all(1).any() for p in photos[:20])
