"""The one way tasks read Hugging Face data: `datasets` from the hub, from local files, or from a
folder written by `save_to_disk`. Tests run it on small local files; nothing here downloads unless
the task names a hub dataset.

    load_split("uoft-cs/cifar10", None, "train")          load_dataset(...) from the hub (or its cache)
    load_split("/data/vision/cifar10", None, "test")      parquet files laid out as on the hub, or save_to_disk
    load_split("text", None, "train", data_files="*.txt") a builder (text, json, parquet) over local files
"""

from __future__ import annotations

from pathlib import Path


def load_split(path: str, config: str | None, split: str, data_files: str | None = None):
    """One split as an HF Dataset (memory-mapped Arrow; images decode on access)."""
    import datasets  # imported here: loading `datasets` costs about a second, and most cells never need it

    folder = Path(path).expanduser()
    if (folder / "dataset_dict.json").exists():  # written by DatasetDict.save_to_disk
        splits = datasets.load_from_disk(str(folder))
        if split not in splits:
            raise ValueError(f"{folder} has splits {list(splits)}, but the task needs a {split!r} split")
        return splits[split]
    if data_files is not None:
        return datasets.load_dataset(path, config, data_files=data_files, split=split)
    return datasets.load_dataset(str(folder) if folder.is_dir() else path, config, split=split)
