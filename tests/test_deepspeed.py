"""DeepSpeed ensemble members: ZeRO training checked against a plain PyTorch loop, and a language-model
cell end to end. The first DeepSpeed start on a machine compiles its CPU communication op (~2 min)."""

import pytest
import torch

from raysweep import experiment as E
from raysweep import store
from raysweep.cell import run_cell
from raysweep.experiment import Train
from raysweep.methods import ensemble
from raysweep.models.mlp import MLP
from raysweep.tasks.vision import Digits
from raysweep.training import deepspeed_members

TINY = Train(epochs=2, batch_size=32, lr=1e-2, weight_decay=1e-3)
SEED = 3


def ignore(*args):
    pass


def plain_pytorch_member(data, model, member: int) -> torch.nn.Module:
    """The member as one would train it by hand: same initialisation, data order, AdamW and clipping."""
    torch.manual_seed(SEED * 1_000 + member)
    network = model.build(data.input_dim, data.output_dim)
    optimizer = torch.optim.AdamW(network.parameters(), lr=TINY.lr, weight_decay=TINY.weight_decay)
    generator = torch.Generator().manual_seed(SEED * 1_000 + member)
    for _ in range(TINY.epochs):
        for idx in torch.randperm(len(data.train_x), generator=generator).split(TINY.batch_size):
            loss = torch.nn.functional.cross_entropy(network(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
    return network


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_every_zero_stage_trains_the_members_a_plain_pytorch_loop_trains(zero_stage):
    """ZeRO only shards optimizer state, gradients and (stage 3) parameters: the arithmetic is Adam's."""
    data, model = Digits().load(96, 0, [], 40), MLP(width=16, depth=2)
    options = ensemble.Options(members=2, engine="deepspeed", zero_stage=zero_stage)
    losses = []
    posterior = deepspeed_members.fit(data, model, options, TINY, SEED, lambda *a: losses.append(a), "cpu")

    assert [epoch for epoch, _ in losses] == [1, 2]
    for member, trained in enumerate(posterior.networks):
        reference = plain_pytorch_member(data, model, member)
        for (name, value), expected in zip(trained.named_parameters(), reference.parameters()):
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5, msg=name)
    probs = posterior.predict(data.eval_sets["test"][0])
    assert probs.shape == (2, 40, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 40))


def test_a_language_model_cell_with_deepspeed_members_scores_every_token(root):
    e = E.load(root / "experiments" / "lm.py")
    e = E.apply_overrides(E.smoke(e), ["grid.methods=ensemble", "methods.ensemble.engine=deepspeed",
                                       "methods.ensemble.zero_stage=2"])
    e.validate()
    cell = E.cells(e)[0]
    reported = []
    rows = run_cell(cell, reported.extend)

    epochs = [row for row in reported if row["kind"] == "epoch"]
    assert epochs and all(row["loss"] > 0 for row in epochs)
    final = {row["split"]: row for row in rows}
    assert set(final) == {"test", *e.grid.ood} and all(row["status"] in store.DONE for row in rows)
    for row in rows:
        assert 0 < row["epistemic"] < row["total"] <= torch.log(torch.tensor(256.0)).item()
        assert row["total"] == pytest.approx(row["aleatoric"] + row["epistemic"], rel=1e-9)
    assert 0 <= final["test"]["accuracy"] <= 1 and final["python_source"]["auroc_epistemic"] >= 0


def test_one_deepspeed_member_has_no_epistemic_uncertainty():
    data, model = Digits().load(64, 0, [], 30), MLP(width=8)
    options = ensemble.Options(members=1, engine="deepspeed", zero_stage=1)
    posterior = deepspeed_members.fit(data, model, options, TINY, SEED, ignore, "cpu")
    from raysweep.evaluate import evaluate

    assert evaluate(posterior, data)["test"]["epistemic"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("options, message", [
    (ensemble.Options(engine="jax"), r"methods\.ensemble\.engine must be one of vmap, deepspeed, got 'jax'"),
    (ensemble.Options(zero_stage=4), r"methods\.ensemble\.zero_stage must be 0, 1, 2 or 3, got 4"),
    (ensemble.Options(workers_per_member=0), r"methods\.ensemble\.workers_per_member must be >= 1, got 0"),
])
def test_bad_deepspeed_options_are_refused_before_any_work(root, options, message):
    e = E.load(root / "experiments" / "lm.py")
    e = E.apply_overrides(e, [f"methods.ensemble.{k}={v}" for k, v in vars(options).items()])
    with pytest.raises(E.ExperimentError, match=message):
        e.validate()


def test_a_sweep_trains_deepspeed_members_on_ray_train_workers_inside_tune(root, tmp_path):
    """The whole path: Tune trial (driver) → Ray Train run of 2 gloo workers → DeepSpeed ZeRO-2 members
    sharded over both → rows back through Tune into the store. Compared with the same cells run in
    this process on one worker: the same global batches, so the same members and metrics."""
    from raysweep import store
    from raysweep.launch import main

    # Two workers of 0.9 CPU: with the driver's sliver they fit the 2 CPUs of a small CI machine.
    overrides = ["grid.methods=ensemble", "methods.ensemble.engine=deepspeed", "methods.ensemble.zero_stage=2",
                 "methods.ensemble.workers_per_member=2", "resources.cpus=0.9"]
    args = [str(root / "experiments" / "lm.py"), "--smoke", "--output", str(tmp_path), "--no-dashboard"]
    assert main(args + [item for o in overrides for item in ("--set", o)]) == 0

    table = store.load(store.results_dir(tmp_path, "lm")).to_pandas()
    splits = 1 + len(E.load(root / "experiments" / "lm.py").grid.ood)  # test and every OOD set
    assert len(table) == 2 * splits and table["status"].isin(store.DONE).all() and table["node"].notna().all()
    e = E.apply_overrides(E.smoke(E.load(root / "experiments" / "lm.py")), overrides)
    for cell in E.cells(e):
        alone = {row["split"]: row for row in run_cell(cell, ignore)}
        for _, row in table[table["cell_id"] == cell["cell_id"]].iterrows():
            assert row["epistemic"] == pytest.approx(alone[row["split"]]["epistemic"], rel=1e-3)
            assert row["nll"] == pytest.approx(alone[row["split"]]["nll"], rel=1e-4)


def test_a_train_run_that_can_never_fit_the_cluster_is_refused_before_it_waits_forever(root, tmp_path, capsys):
    from raysweep.launch import main

    overrides = ["grid.methods=ensemble", "methods.ensemble.engine=deepspeed", "methods.ensemble.workers_per_member=64"]
    args = [str(root / "experiments" / "lm.py"), "--smoke", "--output", str(tmp_path), "--no-dashboard"]
    assert main(args + [item for o in overrides for item in ("--set", o)]) == 2
    assert "method 'ensemble': 64 Ray Train workers with resources.cpus=1, resources.gpus=0 needs 64.05 CPU" \
        in capsys.readouterr().err
