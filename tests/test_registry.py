"""The registries as a newcomer meets them: a new method is one file plus its registry line, every
registered task keeps the task contract, and the light modules stay light."""

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

from raysweep.tasks import TASKS
from raysweep.tasks.algorithmic import ModularArithmetic
from raysweep.tasks.base import Task
from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX, REGRESSION
from raysweep.tasks.regression import LinearRegression
from raysweep.tasks.text import Text
from raysweep.tasks.text_classification import TextClassification, write_synthetic_corpus
from raysweep.tasks.vision import Digits

TOY_METHOD = '''
"""A toy method: S copies of one trained network, each with its outputs jittered (tests only)."""

from dataclasses import dataclass, replace

import torch

from raysweep.methods.base import Method
from raysweep.training.likelihood import to_prediction
from raysweep.training.loop import seeded_network, train_network


@dataclass(frozen=True)
class Options:
    samples: int = 3
    jitter: float = 0.1

    def smoke(self):
        return replace(self, samples=2)

    def problems(self):
        return None if self.samples >= 1 else f"methods.toy.samples must be >= 1, got {self.samples}"


class Posterior:
    def __init__(self, network, kind, options):
        self.network, self.kind, self.options = network, kind, options

    @torch.no_grad()
    def predict(self, x):
        out = self.network(x)
        noise = torch.randn(self.options.samples, *out.shape, generator=torch.Generator().manual_seed(0))
        return to_prediction(out + self.options.jitter * noise, self.kind)


class Toy(Method):
    name = "toy"
    Options = Options

    def fit(self, data, model, options, train, seed, on_epoch, device="cpu"):
        network = train_network(seeded_network(model, data, seed, device), data, train, seed, on_epoch)
        return Posterior(network, data.kind, options)

    def samples(self, options):
        return options.samples
'''

TOY_RUN = '''
import json
from raysweep import experiment as E
from raysweep.cell import run_cell
from raysweep.plan import estimate

e = E.apply_overrides(E.load(EXPERIMENT), ["grid.methods=toy", "grid.n=64", "grid.sizes=8", "grid.seeds=0",
                                           "grid.ood=", "train.epochs=2", "train.min_steps=0",
                                           "methods.toy.samples=4"]).validate()
(cell,) = E.cells(e)
rows = run_cell(cell, lambda rows: None)
(cost,) = estimate(e)
print(json.dumps({"options": cell["method_options"], "status": rows[0]["status"],
                  "epistemic": rows[0]["epistemic"], "eval_flops": cost.eval_flops, "params": cost.params}))
'''


def test_a_new_method_is_one_file_plus_its_registry_line(tmp_path, root):
    package = tmp_path / "raysweep"
    shutil.copytree(root / "raysweep", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "methods" / "toy.py").write_text(TOY_METHOD)
    registry = package / "methods" / "__init__.py"
    text = registry.read_text()
    assert "from raysweep.methods.base import" in text and "    csgld.CSGLD(),\n" in text
    base_import = "from raysweep.methods.base import"
    text = text.replace(base_import, f"from raysweep.methods import toy\n{base_import}")
    registry.write_text(text.replace("    csgld.CSGLD(),\n", "    csgld.CSGLD(),\n    toy.Toy(),\n"))
    script = TOY_RUN.replace("EXPERIMENT", repr(str(root / "experiments" / "regression.py")))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["options"] == {"samples": 4, "jitter": 0.1}  # --set methods.toy.* reached the cell
    assert out["status"] == "ok" and out["epistemic"] > 0  # jittered means disagree
    assert out["eval_flops"] == 2 * out["params"] * 1000 * 4  # --plan read S from the method


# A tiny local corpus, so the file-based text_classification task keeps the contract here too.
CORPUS, OTHER_DOMAIN = write_synthetic_corpus(tempfile.mkdtemp(prefix="raysweep-text-classification-"), rows=60)
# One small configuration per registered task. A task added to TASKS without a row here fails below.
TASK_EXAMPLES = {
    "regression": (LinearRegression(dim=4, n_test=30), 50),
    "digits": (Digits(), 50),
    "text": (Text(context=16), 16 * 5),
    "algorithmic": (ModularArithmetic(modulus=13, n_test=20), 40),
    "text_classification": (TextClassification(source=CORPUS, ood_source=OTHER_DOMAIN, max_length=32), 30),
}
HUB_TASKS = {"vision"}  # its data is on the HF hub: covered by tests/test_vision.py on local files


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_keeps_the_task_contract(name):
    if name in HUB_TASKS:
        assert issubclass(TASKS[name], Task)
        return
    assert name in TASK_EXAMPLES, f"add a small configuration of task {name!r} to TASK_EXAMPLES"
    task, n = TASK_EXAMPLES[name]
    assert isinstance(task, TASKS[name]) and isinstance(task, Task) and task.problems() is None
    assert task.min_train_size() <= n <= task.available_train_size()
    data = task.load(n, 0, list(task.ood_sets()), 20)
    assert list(data.eval_sets) == ["test", *task.ood_sets()]
    examples = n // task.min_train_size() if task.counts_tokens else n
    assert len(data.train_x) == len(data.train_y) == examples
    assert data.kind in (CLASSIFICATION, REGRESSION)
    if data.kind == CLASSIFICATION:
        scored = data.train_y[data.train_y != IGNORE_INDEX]
        assert 0 <= int(scored.min()) and int(scored.max()) < data.n_classes
    for x, y in data.eval_sets.values():
        assert 0 < len(x) and (y is None or len(y) == len(x)) and x.dtype == data.train_x.dtype
    again = task.load(n, 0, [], 20)
    assert torch.equal(again.train_x, data.train_x)  # the seed alone decides the subset


@pytest.mark.parametrize("module", ["raysweep.store", "raysweep.scaling", "raysweep.clusters", "raysweep.report",
                                    "raysweep.fit", "raysweep.fidelity", "raysweep.variants"])
def test_the_store_the_fitting_code_the_report_and_the_cluster_lint_import_neither_torch_nor_pyro(module):
    code = textwrap.dedent(f"""
        import sys
        import {module}
        print(sorted(m for m in ("torch", "pyro") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_document_the_code_cites_is_in_the_repository(root):
    """A user who clones the project can follow every reference: no DESIGN.md outside the repository."""
    cited = subprocess.run(["git", "grep", "-n", "-I", "-e", "DESIGN.md", "-e", "../shared", "--", "raysweep",
                            "tests/*.py", "benchmarks", "README.md", ":!tests/test_registry.py"],
                           cwd=root, capture_output=True, text=True)
    assert cited.stdout == "", cited.stdout
    assert (root / "docs" / "design.md").is_file()
