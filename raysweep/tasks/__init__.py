"""Task registry: the key is the task name written in results and accepted by experiments.

A task is a frozen config dataclass with `load(n, seed, ood, max_eval) -> TaskData`,
`available_train_size()`, `ood_sets()` and `problems()` (None or a message naming the bad field).
"""

from raysweep.tasks.algorithmic import ModularArithmetic
from raysweep.tasks.regression import LinearRegression
from raysweep.tasks.text import Text
from raysweep.tasks.text_classification import TextClassification
from raysweep.tasks.vision import Digits, Vision

TASKS = {
    "regression": LinearRegression,
    "digits": Digits,
    "vision": Vision,
    "text": Text,
    "algorithmic": ModularArithmetic,
    "text_classification": TextClassification,
}
