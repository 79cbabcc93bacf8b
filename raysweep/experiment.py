"""An experiment: one frozen, fully validated description of a whole sweep.

An experiment file is plain Python that defines `experiment = Experiment(...)`. Everything here is
checked before Ray starts, so a typo costs a second, not a cluster hour.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import runpy
import signal
import threading
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from raysweep.methods import METHODS, MethodOptions
from raysweep.models import MODELS
from raysweep.tasks import TASKS

MIN_EVAL_EXAMPLES = 10


class ExperimentError(ValueError):
    """Bad experiment file, bad override or bad grid. Raised before any work starts."""


@dataclass(frozen=True)
class Grid:
    n: tuple[int, ...]  # training-set sizes (examples)
    sizes: tuple[int, ...]  # values of the model's size knob (e.g. MLP width)
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    ood: tuple[str, ...] = ()  # OOD evaluation sets offered by the task
    # Ensemble size M as an axis: each cell is also evaluated with the first m of its S members or
    # samples for every m here, so a larger ensemble contains the smaller ones (one trained pool per
    # cell, nested sub-ensembles; rows carry `members`). Empty: all S only.
    members: tuple[int, ...] = ()


@dataclass(frozen=True)
class Train:
    epochs: int = 30
    min_steps: int = 0  # small N get more epochs so every cell takes at least this many steps
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    # The budget (raysweep.training.budget): "fixed" = epochs raised to min_steps, the same for every N;
    # "converged" = early stopping on val_fraction of each N's training examples, after at least
    # min_steps steps, once patience_steps steps bring no better validation loss, at most max_epochs.
    until: str = "fixed"
    val_fraction: float = 0.1
    patience_steps: int = 100
    max_epochs: int = 500

    def problems(self) -> str | None:
        """None, or a message naming a bad budget field and what is allowed."""
        from raysweep.training.budget import MODES

        if self.until not in MODES:
            return f"train.until must be one of {', '.join(MODES)}, got {self.until!r}"
        if self.until == "converged" and not 0 < self.val_fraction < 0.5:
            return f"train.val_fraction must be in (0, 0.5), got {self.val_fraction}"
        if self.patience_steps < 1 or self.max_epochs < 1:
            return (f"train.patience_steps and train.max_epochs must be >= 1, "
                    f"got {self.patience_steps}, {self.max_epochs}")
        return None


@dataclass(frozen=True)
class Eval:
    max_examples: int = 2000  # cap on each evaluation / OOD set
    ece_bins: int = 15


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 2  # a cell whose worker dies is retried this many times


@dataclass(frozen=True)
class Experiment:
    name: str
    task: typing.Any  # a task config from raysweep.tasks
    model: typing.Any  # a model config from raysweep.models
    grid: Grid
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    methods: MethodOptions = field(default_factory=MethodOptions)
    resources: Resources = field(default_factory=Resources)

    def validate(self, check_data: bool = True) -> Experiment:
        """Check everything; check_data=False skips what needs the dataset itself (N against its size),
        so --plan works on a machine that cannot reach a hub dataset."""
        _validate(self, check_data)
        return self


# ---------------------------------------------------------------------------------------------
# Loading an experiment file

# An experiment file is Python and runs as code: a file stuck in a loop must not hang the launch.
LOAD_TIMEOUT_S = float(os.environ.get("RAYSWEEP_LOAD_TIMEOUT_S", "120"))


class _LoadTimeout(Exception):
    pass


def load(path: str | Path, timeout_s: float | None = None) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file {str(path)!r} does not exist")
    timeout_s = LOAD_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        namespace = _run_with_timeout(path, timeout_s)
    except _LoadTimeout:
        raise ExperimentError(f"experiment file {str(path)!r} did not finish loading within {timeout_s:g}s "
                              f"(an endless loop?); set RAYSWEEP_LOAD_TIMEOUT_S to allow more") from None
    except SystemExit as exc:  # sys.exit() in the file must not end the launch as if it had succeeded
        raise ExperimentError(f"experiment file {str(path)!r} called sys.exit({exc.code!r}) while loading") from None
    except Exception as exc:  # the user's file: report what it raised, not a traceback of ours
        raise ExperimentError(f"experiment file {str(path)!r} raised {type(exc).__name__}: {exc}") from exc
    if "experiment" not in namespace:
        raise ExperimentError(f"experiment file {str(path)!r} defines no `experiment = Experiment(...)`")
    experiment = namespace["experiment"]
    if not isinstance(experiment, Experiment):
        raise ExperimentError(
            f"`experiment` in {str(path)!r} is a {type(experiment).__name__}, expected raysweep.Experiment"
        )
    return experiment


def _run_with_timeout(path: Path, timeout_s: float) -> dict:
    """runpy.run_path under a SIGALRM timer (it interrupts even a pure-Python loop). Signals exist
    only in the main thread; elsewhere (a notebook's worker thread) the file runs without a limit."""
    if threading.current_thread() is not threading.main_thread() or not timeout_s or timeout_s <= 0:
        return runpy.run_path(str(path))

    def expire(signum, frame):
        raise _LoadTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return runpy.run_path(str(path))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# --set key=value overrides

def override_keys(obj, prefix: str = "") -> list[str]:
    """Every dotted key that `--set` accepts for this object."""
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys += override_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def apply_overrides(experiment: Experiment, assignments: list[str]) -> Experiment:
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ExperimentError(f"--set {assignment!r}: expected key=value, e.g. --set grid.seeds=0,1")
        experiment = _set(experiment, key.strip().split("."), text.strip(), key.strip(), experiment)
    return experiment


def _set(obj, parts: list[str], text: str, key: str, root):
    names = {f.name: f for f in fields(obj)}
    head = parts[0]
    if head not in names or (len(parts) > 1 and not is_dataclass(getattr(obj, head))):
        valid = ", ".join(override_keys(root))
        raise ExperimentError(f"--set: unknown key {key!r}; valid keys: {valid}")
    current = getattr(obj, head)
    if len(parts) > 1:
        return replace(obj, **{head: _set(current, parts[1:], text, key, root)})
    if is_dataclass(current):
        raise ExperimentError(f"--set: {key!r} is a section; set one of its fields, "
                              f"e.g. {key}.{fields(current)[0].name}")
    hint = typing.get_type_hints(type(obj))[head]
    return replace(obj, **{head: parse_value(text, hint, key)})


def parse_value(text: str, hint, key: str):
    """Parse `text` as the annotated type: int, float, str, bool or a tuple of one of those."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        items = text.strip("[]()").split(",") if text.strip("[]() ") else []
        return tuple(parse_value(item.strip(), item_type, key) for item in items)
    if hint is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ExperimentError(f"--set {key}={text!r}: expected a bool (true or false)")
    if hint in (int, float):
        try:
            value = hint(text)
        except ValueError:
            raise ExperimentError(f"--set {key}={text!r}: expected {hint.__name__}") from None
        if hint is float and not math.isfinite(value):
            raise ExperimentError(f"--set {key}={text!r}: expected a finite float (not nan or inf)")
        return value
    return text


# ---------------------------------------------------------------------------------------------
# --smoke

def smoke(experiment: Experiment) -> Experiment:
    """The same experiment shrunk to seconds: two smallest N, smallest size, one seed, one epoch."""
    grid = experiment.grid
    return replace(
        experiment,
        grid=replace(grid, n=tuple(sorted(grid.n)[:2]), sizes=tuple(sorted(grid.sizes)[:1]), seeds=grid.seeds[:1]),
        train=replace(experiment.train, epochs=1, min_steps=0, max_epochs=min(experiment.train.max_epochs, 2)),
        eval=replace(experiment.eval, max_examples=min(experiment.eval.max_examples, 200)),
        methods=experiment.methods.smoke(),
    )


# ---------------------------------------------------------------------------------------------
# Validation

def _validate(e: Experiment, check_data: bool = True) -> None:
    _check_name(e.name)
    _check_types(e, "")
    _check_seeds(e.grid.seeds)
    _check_resources(e.resources)
    task_names = {cls: name for name, cls in TASKS.items()}
    if type(e.task) not in task_names:
        raise ExperimentError(f"unknown task {e.task!r}; allowed: {', '.join(TASKS)}")
    model_names = {cls: name for name, cls in MODELS.items()}
    if type(e.model) not in model_names:
        raise ExperimentError(f"unknown model {e.model!r}; allowed: {', '.join(MODELS)}")
    g = e.grid
    for axis in ("n", "sizes", "methods", "seeds"):
        if len(getattr(g, axis)) == 0:
            raise ExperimentError(f"grid.{axis} is empty: the grid has no cells")
    for axis in ("n", "sizes", "methods", "seeds", "ood", "members"):
        values = getattr(g, axis)
        if len(set(values)) != len(values):
            raise ExperimentError(f"grid.{axis} has repeated values: {values}")
    bad_n = [n for n in g.n if not isinstance(n, int) or n <= 0]
    if bad_n:
        raise ExperimentError(f"grid.n must hold positive integers, got {bad_n}")
    minimum, why = e.task.min_train_size(), e.task.min_train_size_reason()
    too_small = [n for n in g.n if n < minimum]
    if too_small:
        raise ExperimentError(f"grid.n value(s) {too_small} are below the {minimum} a cell of task "
                              f"{task_names[type(e.task)]!r} needs ({why})")
    available = _available_train_size(e.task) if check_data else float("inf")
    too_big = [n for n in g.n if n > available]
    if too_big:
        raise ExperimentError(
            f"grid.n value(s) {too_big} exceed the {available} training examples task "
            f"{task_names[type(e.task)]!r} has"
        )
    bad_sizes = [s for s in g.sizes if not isinstance(s, int) or s <= 0]
    if bad_sizes:
        raise ExperimentError(f"grid.sizes (model {e.model.size_knob}) must be positive integers, got {bad_sizes}")
    for method in g.methods:
        if method not in METHODS:
            raise ExperimentError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
        problem = METHODS[method].unsupported(e.task)
        if problem:
            raise ExperimentError(f"method {method!r} cannot run task {task_names[type(e.task)]!r}: {problem}")
        if METHODS[method].uses_model and (problem := METHODS[method].unsupported_model(e.model)):
            raise ExperimentError(f"method {method!r} cannot use model {model_names[type(e.model)]!r}: {problem}")
    _check_members(e)
    offered = e.task.ood_sets()
    for name in g.ood:
        if name not in offered:
            raise ExperimentError(f"unknown OOD set {name!r} for this task; allowed: {', '.join(offered) or 'none'}")
    if any(not isinstance(s, int) or s < 0 for s in g.seeds):
        raise ExperimentError(f"grid.seeds must be non-negative integers, got {g.seeds}")
    _positive(e.train, ("epochs", "batch_size", "lr"), "train")
    _positive(e.eval, ("max_examples", "ece_bins"), "eval")
    if e.eval.max_examples < MIN_EVAL_EXAMPLES:  # one example gives an AUROC of 0 or 1 and a spread of 0
        raise ExperimentError(f"eval.max_examples must be >= {MIN_EVAL_EXAMPLES} (AUROC and spreads need several "
                              f"examples per set), got {e.eval.max_examples}")
    if e.train.min_steps < 0:
        raise ExperimentError(f"train.min_steps must be >= 0, got {e.train.min_steps}")
    if e.train.weight_decay < 0:
        raise ExperimentError(f"train.weight_decay must be >= 0, got {e.train.weight_decay}")
    if e.resources.cpus <= 0 or e.resources.gpus < 0 or e.resources.max_retries < 0:
        raise ExperimentError(f"resources must have cpus > 0, gpus >= 0, max_retries >= 0; got {e.resources}")
    # the model as every cell builds it: each value of the size axis
    sized = [replace(e.model, **{e.model.size_knob: size}).problems() for size in g.sizes]
    for problem in (e.task.problems(), e.model.problems(), *sized, e.methods.problems(), e.train.problems()):
        if problem:
            raise ExperimentError(problem)
    if any(METHODS[m].uses_model for m in g.methods):
        # Shapes that do not fit (images into an MLP, a ViT patch that does not tile the image)
        # fail here rather than inside the first trial.
        for problem in (e.model.problems_with(e.task), e.task.problems_with(e.model)):
            if problem:
                raise ExperimentError(problem)


# One folder name: no separator, not "." or "..", not hidden (a leading "."), printable ASCII only.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SEED_LIMIT = 2**32  # numpy's seed range
INT64 = 2**63  # the store's integer columns


def _check_name(name) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ExperimentError(
            f"experiment name {name!r} must be a non-empty string of at most 100 letters, digits, '.', '_' "
            f"or '-' that does not start with '.' (it is a folder name under --output)")


def _check_types(obj, prefix: str) -> None:
    """Every field of a dataclass against its annotation, recursively; the annotations are the
    list of fields, so a field added later is checked without touching this function."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        key = f"{prefix}{f.name}"
        if is_dataclass(value) and not isinstance(value, type):
            _check_types(value, key + ".")
        elif (problem := _type_problem(value, hint)) is not None:
            raise ExperimentError(f"{key} = {value!r}: {problem}")


def _type_problem(value, hint) -> str | None:
    """Why `value` does not fit the annotation `hint`, or None. bool is not accepted as an int."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return None
    if origin is tuple:
        if not isinstance(value, tuple):
            return (f"expected a tuple of {_hint_name(args[0])}, e.g. ({_example(args[0])},), "
                    f"got a {type(value).__name__}")
        item = args[0]
        return next((f"item {v!r}: {p}" for v in value if (p := _type_problem(v, item)) is not None), None)
    if origin in (typing.Union, types.UnionType):
        if any(_type_problem(value, arg) is None for arg in args):
            return None
        return f"expected {' or '.join(_hint_name(a) for a in args)}, got a {type(value).__name__}"
    if hint is type(None):
        return None if value is None else f"expected None, got a {type(value).__name__}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected a bool (True or False), got a {type(value).__name__}"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an int, got a {type(value).__name__}"
        return None if -INT64 <= value < INT64 else "expected an int within ±2**63"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a float, got a {type(value).__name__}"
        return None if math.isfinite(value) else "expected a finite float (not nan or inf)"
    if hint is str:
        return None if isinstance(value, str) else f"expected a str, got a {type(value).__name__}"
    return None  # an annotation this checker does not know (a class, a Literal): the section's problems() decide


def _hint_name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def _example(hint) -> str:
    return {int: "200", float: "0.5", str: "'name'", bool: "True"}.get(hint, "...")


def _check_seeds(seeds) -> None:
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if bad:
        raise ExperimentError(f"grid.seeds must be integers in [0, 2**32), got {bad}")


def _check_resources(r) -> None:
    # Types and finiteness are known here (see _check_types); what remains are the ranges.
    if r.cpus <= 0 or r.gpus < 0 or r.max_retries < 0:
        raise ExperimentError(f"resources must have cpus > 0, gpus >= 0, max_retries >= 0; got {r}")
    if r.gpus > 1 and r.gpus != int(r.gpus):
        raise ExperimentError(f"resources.gpus = {r.gpus!r}: Ray grants a fraction of one GPU or whole GPUs")


def _check_members(e: Experiment) -> None:
    """Every sub-ensemble size must be one each method can give: 1 <= m <= S."""
    if any(m < 1 for m in e.grid.members):
        raise ExperimentError(f"grid.members must hold positive integers, got {list(e.grid.members)}")
    for name in e.grid.methods:
        method = METHODS[name]
        available = method.samples(getattr(e.methods, name, method.Options()))
        too_many = [m for m in e.grid.members if m > available]
        if too_many:
            raise ExperimentError(
                f"grid.members {too_many} exceed the {available} members/samples method {name!r} gives; "
                f"raise its members or samples (e.g. --set methods.ensemble.members={max(e.grid.members)}) "
                f"or drop {name!r} from grid.methods")


def _available_train_size(task) -> int:
    try:
        return task.available_train_size()
    except (ConnectionError, OSError) as exc:
        raise ExperimentError(
            f"cannot reach the data of task {task!r}: {exc}. Without internet, point the task at a local "
            f"copy (e.g. source='text:/data/*.txt', or a dataset saved to a local folder)") from exc


def _positive(section, names, prefix):
    for name in names:
        value = getattr(section, name)
        if not value > 0:
            raise ExperimentError(f"{prefix}.{name} must be > 0, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Cells

def cells(e: Experiment) -> list[dict]:
    """Every point of the grid as a plain, JSON-able dict with a stable `cell_id`.

    Methods that use no network (e.g. `exact`) ignore the size axis, so they get one cell per
    (N, seed) instead of one per size.
    """
    task_name = {cls: name for name, cls in TASKS.items()}[type(e.task)]
    model_name = {cls: name for name, cls in MODELS.items()}[type(e.model)]
    out = []
    for method in e.grid.methods:
        sizes = e.grid.sizes if METHODS[method].uses_model else (None,)
        for size in sizes:
            for n in e.grid.n:
                for seed in e.grid.seeds:
                    model = None if size is None else {
                        "name": model_name, **dataclasses.asdict(replace(e.model, **{e.model.size_knob: size}))}
                    config = {
                        "experiment": e.name,
                        "task": {"name": task_name, **dataclasses.asdict(e.task)},
                        "model": model,
                        "size_knob": None if size is None else e.model.size_knob,
                        "size": size,
                        "method": method,
                        "method_options": e.methods.for_method(method),
                        "n": n,
                        "seed": seed,
                        "ood": list(e.grid.ood),
                        # only when set: cells of grids without the axis keep their ids
                        **({"members": list(e.grid.members)} if e.grid.members else {}),
                        "train": dataclasses.asdict(e.train),
                        "eval": dataclasses.asdict(e.eval),
                    }
                    out.append({"cell_id": cell_id(config), **config})
    return out


def cell_id(config: dict) -> str:
    """A stable hash of the fully resolved config (key order and Python version do not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cell_label(cell: dict) -> str:
    """Short human name for a cell, used for trial names and progress lines."""
    size = f"_{cell['size_knob']}{cell['size']}" if cell["size"] is not None else ""
    return f"{cell['task']['name']}_N{cell['n']}{size}_{cell['method']}_s{cell['seed']}"
