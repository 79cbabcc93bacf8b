"""Variational inference with Pyro (Blundell et al., 2015): the network as a PyroModule whose
weights have Gaussian priors N(0, 1/α), a Gaussian guide fitted by stochastic variational inference.

- guide="meanfield": AutoNormal, a diagonal Gaussian (the ELBO's KL term is taken analytically);
  guide="lowrank": AutoLowRankMultivariateNormal, diagonal plus rank-`rank` covariance.
- last_layer=True: only the last layer is Bayesian; the layers before it are point estimates
  learned by the same ELBO (for large models).
- The ELBO is scaled to the dataset: the likelihood is over scored units (tokens of a sequence task,
  IGNORE_INDEX masked out), and a minibatch with b scored units counts N/b times, N the training
  set's scored units (training_units); the KL term counts once per step.
- train.until="converged": after each epoch the validation loss of the guide's median network
  decides when to stop (training.budget), and the guide of the best epoch is kept.
- Regression: the likelihood is N(mean, variance) from the network's Gaussian head, unless the task
  states its noise variance (`extras["noise_var"]`, as the linear-Gaussian task does), which is then
  used as known, like the exact posterior does.
- Prediction: S weight draws from the fitted guide are taken once at the end of fit, and
  pyro.infer.Predictive runs the model under them, so every batch and evaluation set sees the same
  S networks.

Pyro keeps parameters in a global store; each posterior keeps its own (param_store.scope), so two
fitted posteriors in one process never see each other's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from pyro.nn import PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from raysweep.methods.base import Method
from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX
from raysweep.training import budget
from raysweep.training.budget import check_finite, epochs_for, steps_per_epoch
from raysweep.training.likelihood import gaussian_head, scored_units, training_units
from raysweep.training.loop import augmenter, minibatches

GUIDES = ("meanfield", "lowrank")
INIT_SCALE = 0.05  # the guide's initial standard deviation around the network's usual init
LR_DECAY = 0.1  # the learning rate falls by this factor over training


@dataclass(frozen=True)
class Options:
    guide: str = "meanfield"
    rank: int = 10  # guide="lowrank" only
    last_layer: bool = False
    prior_precision: float = 1.0  # α: every Bayesian weight ~ N(0, 1/α)
    lr: float = 1e-2  # Adam on the guide's parameters, decayed to lr/10 over training
    samples: int = 32

    def smoke(self) -> Options:
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if self.guide not in GUIDES:
            return f"methods.vi.guide must be one of {', '.join(GUIDES)}, got {self.guide!r}"
        if self.rank < 1:
            return f"methods.vi.rank must be >= 1, got {self.rank}"
        if not self.prior_precision > 0:
            return f"methods.vi.prior_precision must be > 0, got {self.prior_precision}"
        if not self.lr > 0:
            return f"methods.vi.lr must be > 0, got {self.lr}"
        if self.samples < 1:
            return f"methods.vi.samples must be >= 1, got {self.samples}"
        return None


def bayesian_network(network: nn.Module, prior_precision: float, last_layer: bool) -> nn.Module:
    """Turn a built torch network into a PyroModule (in place) with N(0, 1/α) priors on its weights.

    Returns the network and the initial values of its sample sites (the usual torch init)."""
    bayesian = [m for m in network.modules() if list(m.parameters(recurse=False))]
    if last_layer:
        bayesian = bayesian[-1:]
    init = {}
    to_pyro_module_(network)
    names = {id(m): name for name, m in network.named_modules()}
    for module in bayesian:
        for name, value in list(module.named_parameters(recurse=False)):
            prior = dist.Normal(torch.zeros_like(value.detach()), prior_precision ** -0.5).to_event(value.dim())
            init[f"{names[id(module)]}.{name}".lstrip(".")] = value.detach().clone()
            delattr(module, name)
            setattr(module, name, PyroSample(prior))
    return network, init


class Model:
    """The Pyro model: y ~ Categorical(logits=f(x)) or N(mean(x), variance(x) or the known σ²)."""

    def __init__(self, network: nn.Module, kind: str, noise_var: float | None):
        self.network, self.kind, self.noise_var = network, kind, noise_var

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None):
        """size: the training set's scored units; the batch's log likelihood is scaled by size / its scored
        units (1 when size is None). The plate runs over units: tokens of a sequence task, examples otherwise."""
        outputs = self.network(x)  # (B, out), or (B, T, V) for a sequence task
        if self.kind == CLASSIFICATION:
            pyro.deterministic("outputs", outputs)
            likelihood = dist.Categorical(logits=outputs.reshape(-1, outputs.shape[-1]))  # one row per token
        else:
            mean, variance = gaussian_head(outputs)
            if self.noise_var is not None:
                variance = torch.full_like(mean, self.noise_var)
            pyro.deterministic("outputs", torch.stack([mean, variance], -1))
            likelihood = dist.Normal(mean, variance.sqrt())
        targets, scale = None, 1.0
        if y is not None:
            targets = y.reshape(-1)
            if self.kind == CLASSIFICATION:
                scored = targets != IGNORE_INDEX
                likelihood, targets = likelihood.mask(scored), targets.clamp_min(0)  # masked: log prob 0
            if size is not None:
                scale = size / max(scored_units(y, self.kind), 1)
        with pyro.plate("data", likelihood.batch_shape[0]), poutine.scale(scale=scale):
            return pyro.sample("y", likelihood, obs=targets)


class ScaleSpeed:
    """How fast the guide's scales still move at the end of training: over the last epoch, the mean
    |change| of their unconstrained values as a share of the most Adam could have moved them (the sum
    of its step sizes, ClippedAdam's lr decaying by lrd a step). On their way from an initial scale
    far from the ELBO's optimum the scales keep one direction and move by most of Adam's step
    (measured: 0.56-0.63 on a linear model after 40 steps, 0.74-0.98 on the digits job's MLPs): the
    EU is then where training stopped, set by the step count and INIT_SCALE, not by the data. Settled
    at the optimum they move only by the ELBO's noise (0.06-0.19 on the fidelity experiment).
    NaN after a single epoch: Pyro creates the guide's parameters at its first step."""

    def __init__(self, lr: float, lrd: float):
        self.lr, self.lrd, self.last = lr, lrd, float("nan")
        self.before: torch.Tensor | None = None

    @staticmethod
    def _scales() -> torch.Tensor | None:
        store = pyro.get_param_store()
        scales = [value.detach().flatten() for name, value in store.named_parameters() if ".scale" in name]
        return torch.cat(scales) if scales else None

    def start_epoch(self) -> None:
        self.before = self._scales()  # torch.cat copies: training does not move it

    def end_epoch(self, steps: int) -> None:
        reach = sum(self.lr * self.lrd ** (k + 1) for k in range(steps))  # ClippedAdam decays, then steps
        self.lr *= self.lrd ** steps
        if self.before is not None:
            self.last = ((self._scales() - self.before).abs().mean() / reach).item()


class Posterior:
    def __init__(self, model: Model, draws: dict, store_state: dict, kind: str, scale_speed: float):
        self.model, self.draws, self.store_state, self.kind = model, draws, store_state, kind
        self.scale_speed = scale_speed  # ScaleSpeed.last: how far from settled the guide was

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        device = next(iter(self.draws.values())).device
        with pyro.get_param_store().scope(self.store_state):
            predictive = Predictive(self.model, posterior_samples=self.draws, return_sites=["outputs"])
            # (S, 1, B, out): Predictive puts one size-1 dim per plate of the model ("data") before a
            # site outside every plate, as "outputs" is; the model has that one plate, so dim 1 goes.
            outputs = predictive(x.to(device))["outputs"].to(x.device).squeeze(1)  # (S, B, out)
        if self.kind == CLASSIFICATION:
            return outputs.softmax(-1)  # (S, B, C)
        return outputs[..., 0], outputs[..., 1]  # (S, B) means and variances


class _Watch:
    """Early stopping of VI: the validation loss (mean NLL per scored unit) of the guide's median network,
    and a copy of the guide's parameters at its best."""

    def __init__(self, pyro_model: Model, guide, data, train, steps: int):
        self.model, self.guide = pyro_model, guide
        val_x, val_y = data.extras["validation"]
        device = next(iter(pyro.get_param_store().values()), torch.zeros(())).device
        self.x, self.y = val_x.to(device), val_y.to(device)
        self.units = scored_units(val_y, data.kind)
        self.rule = budget.EarlyStopping(train, steps)

    @torch.no_grad()
    def loss(self) -> torch.Tensor:
        median = poutine.condition(self.model, data=self.guide.median())
        trace = poutine.trace(median).get_trace(self.x, self.y)
        return -trace.nodes["y"]["fn"].log_prob(trace.nodes["y"]["value"]).sum() / max(self.units, 1)

    def stopping(self) -> bool:
        params = dict(pyro.get_param_store().named_parameters())
        return self.rule.update(self.loss().reshape(1), {name: p.unsqueeze(0) for name, p in params.items()})

    def finish(self) -> float:
        for name, p in pyro.get_param_store().named_parameters():
            with torch.no_grad():
                p.copy_(self.rule.best_params[name][0])
        return self.rule.best_loss.item()


class VI(Method):
    """Mean-field or low-rank Gaussian variational inference over the weights, with Pyro."""

    name = "vi"
    Options = Options

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> Posterior:
        pyro.set_rng_seed(seed)
        network = model.build(data.input_dim, data.output_dim).to(device)
        network, init = bayesian_network(network, options.prior_precision, options.last_layer)
        noise_var = data.extras.get("noise_var") if data.kind != CLASSIFICATION else None
        pyro_model = Model(network, data.kind, noise_var)
        x, y = data.train_x.to(device), data.train_y.to(device)
        n, units = len(x), training_units(data)  # examples to draw minibatches from; the likelihood's N
        with pyro.get_param_store().scope() as store_state:
            if options.guide == "meanfield":
                guide = AutoNormal(pyro_model, init_loc_fn=init_to_value(values=init), init_scale=INIT_SCALE)
                elbo = TraceMeanField_ELBO()
            else:
                guide = AutoLowRankMultivariateNormal(pyro_model, init_loc_fn=init_to_value(values=init),
                                                      init_scale=INIT_SCALE, rank=options.rank)
                elbo = Trace_ELBO()
            epochs = budget.max_epochs(train, n)
            # the learning-rate decay spans the fixed budget (in the converged mode it goes on decaying)
            steps = epochs_for(train, n) * steps_per_epoch(train, n)
            # Adam whose step size decays to lr/10 by the end: the last iterates average out the ELBO's noise
            lrd = LR_DECAY ** (1 / steps)
            optimizer = pyro.optim.ClippedAdam({"lr": options.lr, "lrd": lrd, "clip_norm": 100.0})
            svi = SVI(pyro_model, guide, optimizer, elbo)
            augment = augmenter(data, seed)
            watch = _Watch(pyro_model, guide, data, train, steps_per_epoch(train, n)) \
                if train.until == budget.CONVERGED else None
            stop_reason = budget.STOP_FIXED if watch is None else budget.STOP_CAP
            speed = ScaleSpeed(options.lr, lrd)
            for epoch, batches in minibatches(n, train.batch_size, epochs, seed, device):
                # svi.step returns the negative ELBO estimate for the whole data set: report it per unit.
                # Pyro's argument validation costs ~30% of a small model's step; the model was checked on step 1.
                speed.start_epoch()
                with pyro.validation_enabled(epoch == 1):
                    loss = sum(svi.step(augment(x[idx]), y[idx], units) for idx in batches) / len(batches) / units
                speed.end_epoch(len(batches))
                check_finite(epoch, loss)
                on_epoch(epoch, loss)
                if watch is not None and watch.stopping():
                    stop_reason = budget.STOP_CONVERGED
                    break
            val_loss = watch.finish() if watch is not None else None
            budget.report_outcome(on_epoch, budget.Outcome(epoch, loss, val_loss, stop_reason))
            with torch.no_grad():
                draws = Predictive(guide, num_samples=options.samples)(x[:1])  # {site: (S, ...)}
        return Posterior(pyro_model, draws, store_state, data.kind, speed.last)

    def facts(self, posterior) -> dict:
        return {"scale_speed": posterior.scale_speed}

    def samples(self, options: Options) -> int:
        return options.samples
