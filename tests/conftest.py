from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """Tiny models: one thread is faster, and immune to a busy machine's oversubscription.
    Test files of such models say `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch  # here, not at the top: test files without torch do not pay for its import

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def linear_model():
    """A model config for y = wᵀx: a network that is only its last layer, without bias, so its
    features are x (the conjugate linear-Gaussian task's model)."""
    from torch import nn

    class LinearModel:
        def build(self, input_dim, output_dim, dropout=0.0):
            return nn.Sequential(nn.Linear(input_dim, output_dim, bias=False))

    return LinearModel()

