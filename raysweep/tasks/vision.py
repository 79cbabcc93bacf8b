"""Image classification: scikit-learn's bundled digits offline, and CIFAR-10, CIFAR-100, SVHN and
ImageNet32 through HF `datasets`.

`Digits` (the offline default): 8x8 handwritten digits, 1,797 images, no download. It gives flat
(N, 64) vectors for the MLP, or (N, 1, 8, 8) images for the image models with `as_images=True`.

`Vision`: the standard datasets, loaded with `datasets.load_dataset` from the HF hub, or from a local
folder holding one subfolder per dataset (`root`). Images are (N, 3, H, W) floats, normalised per
channel with the mean and std of a fixed sample of the training split (the same for every cell; OOD
sets are normalised with the in-distribution statistics, as a deployed model would see them).

    dataset      hub id (load_dataset)                       image column  label column  eval split
    cifar10      uoft-cs/cifar10                             img           label         test
    cifar100     uoft-cs/cifar100                            img           fine_label    test
    svhn         ufldl-stanford/svhn, config cropped_digits  image         label         test
    imagenet32   benjamin-paine/imagenet-1k-32x32            image         label         validation

Every dataset is also an OOD set of every other (SVHN for CIFAR-10 is the classic), and "noise" is
uniform random pixels. With `root="/data/vision"`, `cifar10` is read from `/data/vision/cifar10/`:
parquet files named by split as on the hub (`train.parquet`, `test.parquet`, or
`data/train-00000-of-00001.parquet`, ...) through the same `load_dataset` call, or a folder written
by `DatasetDict.save_to_disk`. A machine with internet access can make one with
`load_dataset("uoft-cs/cifar10").save_to_disk("/data/vision/cifar10")`.

`augment=True` returns a random-crop (4-pixel zero padding) and horizontal-flip function in
`TaskData.extras["augment"]`, for the training loop to apply to each minibatch (torch ops only).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raysweep.tasks import hub
from raysweep.tasks.base import Task
from raysweep.tasks.data import CLASSIFICATION, TaskData, nested_subset

N_DIGITS = 1797
SPLIT_SEED = 12345  # fixes which images are held out for evaluation, for every cell


@dataclass(frozen=True)
class Digits(Task):
    """Handwritten digits; OOD sets:

    - "held_out_classes": digits of the classes in `held_out_classes`, which are never trained on
      nor in "test" (the models then have 10 - k classes); offered when held_out_classes is set;
    - "photos": 8x8 grey patches of the two photographs scikit-learn ships (load_sample_images),
      each a random 16-48 pixel square averaged down to 8x8, contrast-stretched to [0, 1];
    - "rotated": the test digits turned 90°, same pixel statistics. Not OOD for these models as
      measured (TU below the test set's in 81% of cells; AUROC by EU 0.37-0.53): kept for comparison;
    - "noise": uniform random pixels at the digits' intensity range.
    """

    n_test: int = 397
    as_images: bool = False  # (N, 1, 8, 8) images for the image models instead of flat (N, 64) vectors
    held_out_classes: tuple[int, ...] = ()  # digit classes kept out of training and "test": an OOD set

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return (1, 8, 8) if self.as_images else None

    def problems_with(self, model) -> str | None:
        return _model_problems(self, model, "task.as_images=False")

    def available_train_size(self) -> int:
        return len(self._in_distribution()) - self.n_test

    def ood_sets(self) -> tuple[str, ...]:
        return (*(("held_out_classes",) if self.held_out_classes else ()), "photos", "rotated", "noise")

    def problems(self) -> str | None:
        held = tuple(self.held_out_classes)
        if any(c not in range(10) for c in held) or len(set(held)) != len(held) or len(held) > 8:
            return f"task.held_out_classes must be distinct digits 0-9, at most 8 of them, got {held}"
        if not 0 < self.n_test < len(self._in_distribution()):
            return f"task.n_test must be in 1..{len(self._in_distribution()) - 1}, got {self.n_test}"
        return None

    def _in_distribution(self) -> torch.Tensor:
        """Indices of the images of the trained classes, in a fixed random order (the first n_test are "test")."""
        from sklearn.datasets import load_digits

        order = torch.randperm(N_DIGITS, generator=torch.Generator().manual_seed(SPLIT_SEED))
        if not self.held_out_classes:
            return order  # the split of earlier versions, unchanged
        labels = torch.from_numpy(load_digits().target)[order]
        return order[~torch.isin(labels, torch.tensor(list(self.held_out_classes)))]

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        from sklearn.datasets import load_digits  # ships with scikit-learn: no download

        digits = load_digits()
        images = torch.from_numpy(digits.images).float() / 16.0  # (1797, 8, 8) in [0, 1]
        labels = torch.from_numpy(digits.target).long()
        order = self._in_distribution()
        test_idx, pool_idx = order[: self.n_test], order[self.n_test:]
        train_idx = pool_idx[nested_subset(len(pool_idx), n, seed)]
        test_images = images[test_idx][:max_eval]
        shape = (1, 8, 8) if self.as_images else (64,)
        trained = [c for c in range(10) if c not in self.held_out_classes]
        relabel = torch.full((10,), -1, dtype=torch.long)
        relabel[trained] = torch.arange(len(trained))  # the trained classes as 0 .. 10 - k - 1
        labels = relabel[labels]
        eval_sets = {"test": (test_images.reshape(-1, *shape), labels[test_idx][:max_eval])}
        if "held_out_classes" in ood:
            held = (labels < 0).nonzero().flatten()[:max_eval]
            eval_sets["held_out_classes"] = (images[held].reshape(-1, *shape), None)
        if "photos" in ood:
            eval_sets["photos"] = (photo_patches(len(test_images)).reshape(-1, *shape), None)
        if "rotated" in ood:
            eval_sets["rotated"] = (torch.rot90(test_images, 1, dims=(1, 2)).reshape(-1, *shape), None)
        if "noise" in ood:
            noise = torch.rand(len(test_images), 64, generator=torch.Generator().manual_seed(SPLIT_SEED))
            eval_sets["noise"] = (noise.reshape(-1, *shape), None)
        return TaskData(
            kind=CLASSIFICATION,
            train_x=images[train_idx].reshape(-1, *shape),
            train_y=labels[train_idx],
            eval_sets=eval_sets,
            n_classes=len(trained),
        )


def photo_patches(count: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    """(count, 8, 8) grey patches in [0, 1] of scikit-learn's two bundled photographs: random squares of
    16 to 48 pixels, averaged down to 8x8 (as the digits were), each stretched to the full range."""
    from sklearn.datasets import load_sample_images  # ships with scikit-learn: no download

    photos = [torch.tensor(image, dtype=torch.float32).mean(-1) for image in load_sample_images().images]  # (H, W) grey
    generator = torch.Generator().manual_seed(seed)
    patches = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = 8 * int(torch.randint(2, 7, (), generator=generator))
        top = int(torch.randint(0, photo.shape[0] - side + 1, (), generator=generator))
        left = int(torch.randint(0, photo.shape[1] - side + 1, (), generator=generator))
        patch = torch.nn.functional.avg_pool2d(photo[None, None, top:top + side, left:left + side], side // 8)[0, 0]
        low, high = patch.min(), patch.max()
        patches.append((patch - low) / (high - low).clamp_min(1e-6))
    return torch.stack(patches)


def _model_problems(task, model, flat_hint: str) -> str | None:
    """Images need an image model, and flat vectors a model that takes them (e.g. the MLP)."""
    if task.image_shape is not None and not model.takes_images:
        return (f"task {type(task).__name__} gives images {task.image_shape}, but model {type(model).__name__} "
                f"takes flat vectors; set {flat_hint} or use an image model (cnn, resnet, wrn, vit)")
    return None  # flat vectors to an image model: the model's own problems_with says so


# ---------------------------------------------------------------------------------------------
# The standard datasets through HF `datasets`

@dataclass(frozen=True)
class Source:
    hub: str  # load_dataset path on the HF hub
    config: str | None
    image: str  # column names
    label: str
    eval_split: str
    train_size: int  # images in the train split of the hub version
    classes: int


DATASETS = {
    "cifar10": Source("uoft-cs/cifar10", None, "img", "label", "test", 50_000, 10),
    "cifar100": Source("uoft-cs/cifar100", None, "img", "fine_label", "test", 50_000, 100),
    "svhn": Source("ufldl-stanford/svhn", "cropped_digits", "image", "label", "test", 73_257, 10),
    "imagenet32": Source("benjamin-paine/imagenet-1k-32x32", None, "image", "label", "validation", 1_281_167, 1000),
}
HUB_IMAGE_SHAPE = (3, 32, 32)  # every hub dataset above: 32x32 RGB


@dataclass(frozen=True)
class Vision(Task):
    """One of DATASETS (see the module docstring); OOD sets: the other datasets, and "noise"."""

    dataset: str = "cifar10"
    root: str = ""  # a folder with one subfolder per dataset; "" = the HF hub
    augment: bool = False  # random crop + horizontal flip of each training minibatch
    flatten: bool = False  # flat (N, C·H·W) vectors for the MLP instead of images
    stats_images: int = 5_000  # training images whose per-channel mean and std normalise every set

    def problems(self) -> str | None:
        if self.dataset not in DATASETS:
            return f"task.dataset {self.dataset!r} is not one of: {', '.join(DATASETS)}"
        if self.root and not self._local(self.dataset).is_dir():
            return (f"task.root {self.root!r} has no folder {self.dataset!r}: put the dataset there (parquet files "
                    f"named by split, or a save_to_disk folder), or set task.root='' to load "
                    f"{DATASETS[self.dataset].hub!r} from the HF hub")
        if self.stats_images <= 0:
            return f"task.stats_images must be > 0, got {self.stats_images}"
        if self.augment and self.flatten:
            return "task.augment crops and flips images: it needs task.flatten=False"
        return None

    def problems_with(self, model) -> str | None:
        return _model_problems(self, model, "task.flatten=False")

    def available_train_size(self) -> int:
        if self._bad_location():
            return sys.maxsize  # validation refuses the config later, with the message of problems()
        return len(self._split(self.dataset, "train")) if self.root else DATASETS[self.dataset].train_size

    def ood_sets(self) -> tuple[str, ...]:
        others = [name for name in DATASETS if name != self.dataset]
        # offer only what is there, so a missing folder is refused before training
        if self.root and not self._bad_location():
            others = [name for name in others if self._local(name).is_dir()]
        return (*others, "noise")

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return None if self.flatten else self._shape()

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        source, shape = DATASETS[self.dataset], self._shape()
        train = self._split(self.dataset, "train")
        if n > len(train):
            raise ValueError(f"N={n} exceeds the {len(train)} training images of {self.dataset!r}")
        mean, std = _channel_stats(self.root, self.dataset, self.stats_images)

        def normalise(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, C, H, W) -> float
            x = (images.float() / 255 - mean[:, None, None]) / std[:, None, None]
            return x.flatten(1) if self.flatten else x

        train_idx = nested_subset(len(train), n, seed)
        train_x = normalise(_images(train, source.image, train_idx, shape))
        train_y = _labels(train, source, train_idx, self.dataset)
        test = self._split(self.dataset, source.eval_split)
        test_idx = _fixed_sample(len(test), max_eval)
        eval_sets = {"test": (normalise(_images(test, source.image, test_idx, shape)),
                              _labels(test, source, test_idx, self.dataset))}
        for name in ood:
            if name == "noise":
                generator = torch.Generator().manual_seed(SPLIT_SEED)
                noise = torch.randint(0, 256, (len(test_idx), *shape), generator=generator, dtype=torch.uint8)
                eval_sets["noise"] = (normalise(noise), None)
            else:
                other = self._split(name, DATASETS[name].eval_split)
                eval_sets[name] = (normalise(_images(other, DATASETS[name].image,
                                                     _fixed_sample(len(other), max_eval), shape)), None)
        extras = {"augment": RandomCropFlip(padding=4)} if self.augment else {}
        return TaskData(kind=CLASSIFICATION, train_x=train_x, train_y=train_y, eval_sets=eval_sets,
                        n_classes=source.classes, extras=extras)

    def _bad_location(self) -> bool:
        return self.dataset not in DATASETS or bool(self.root) and not self._local(self.dataset).is_dir()

    def _local(self, name: str) -> Path:
        return Path(self.root).expanduser() / name

    def _split(self, name: str, split: str):
        return _load_split(self.root, name, split)

    def _shape(self) -> tuple[int, int, int]:
        if not self.root or self._bad_location():
            return HUB_IMAGE_SHAPE
        train = self._split(self.dataset, "train")
        width, height = train[0][DATASETS[self.dataset].image].size
        return (3, height, width)


@functools.lru_cache(maxsize=16)
def _load_split(root: str, name: str, split: str):
    """One split of a dataset, from the hub or from root/<name> (see hub.load_split)."""
    source = DATASETS[name]
    return hub.load_split(str(Path(root) / name) if root else source.hub, source.config, split)


def _images(dataset, column: str, idx: torch.Tensor, shape) -> torch.Tensor:
    """Rows idx of an image column as uint8 (B, C, H, W), converted to RGB and resized to `shape`."""
    if column not in dataset.column_names:
        raise ValueError(f"dataset has no image column {column!r}; its columns are {dataset.column_names}")
    _, height, width = shape
    pictures = dataset.select(idx.tolist())[column]
    arrays = [np.asarray(p.convert("RGB").resize((width, height)) if p.size != (width, height) else p.convert("RGB"))
              for p in pictures]
    if not arrays:
        return torch.empty(0, *shape, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)


def _labels(dataset, source: Source, idx: torch.Tensor, name: str) -> torch.Tensor:
    if source.label not in dataset.column_names:
        raise ValueError(f"{name!r} has no label column {source.label!r}; its columns are {dataset.column_names}")
    labels = torch.tensor(dataset.select(idx.tolist())[source.label], dtype=torch.long)
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < source.classes):
        raise ValueError(f"{name!r} labels must lie in 0..{source.classes - 1}, "
                         f"got {int(labels.min())}..{int(labels.max())}")
    return labels


def _fixed_sample(size: int, count: int) -> torch.Tensor:
    """The same `count` rows of an evaluation split for every cell."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(SPLIT_SEED))[:count]


@functools.lru_cache(maxsize=16)
def _channel_stats(root: str, name: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) in [0, 1] units, of a fixed sample of the training split."""
    train = _load_split(root, name, "train")
    shape = (3, *train[0][DATASETS[name].image].size[::-1])
    images = _images(train, DATASETS[name].image, _fixed_sample(len(train), count), shape).float() / 255
    return images.mean((0, 2, 3)), images.std((0, 2, 3)).clamp_min(1e-3)


class RandomCropFlip:
    """Standard CIFAR augmentation on a batch: zero-pad by `padding`, crop back to size at a random
    offset per image, flip horizontally with probability 1/2. Torch ops only, on the batch's device."""

    def __init__(self, padding: int = 4):
        self.padding = padding

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images: (..., C, H, W), e.g. (M, B, C, H, W) minibatches of M members; same shape out."""
        lead, (channels, height, width) = images.shape[:-3], images.shape[-3:]
        x = images.reshape(-1, channels, height, width)  # (B, C, H, W)
        count, p = len(x), self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        dy = torch.randint(0, 2 * p + 1, (count,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (count,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(count, device=x.device)[:, None, None, None]
        chan = torch.arange(channels, device=x.device)[None, :, None, None]
        cropped = padded[batch, chan, rows, cols]  # (B, C, H, W)
        flip = (torch.rand(count, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        return torch.where(flip, cropped.flip(-1), cropped).reshape(*lead, channels, height, width)
