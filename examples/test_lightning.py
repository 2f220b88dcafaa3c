"""Lightning as its users run it, in fake worlds: docs/lightning.md.

Fabric and the Trainer find torchrun's environment the world sets (so a
``devices=`` that disagrees with the world is refused, as under torchrun),
adopt the world's group, and run unchanged; in an exact world each rank is
its own rank zero or not. Lightning comes from .ci/clients.txt; without it
these tests skip, saying so.
"""

import warnings

import pytest
import torch
import torch.nn as nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    L = pytest.importorskip("pytorch_lightning", reason="Lightning is not installed (pip install --no-deps -r .ci/clients.txt)")
    from lightning_fabric import Fabric
    from lightning_utilities.core.rank_zero import rank_zero_only

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(8, 1)
        self.seen = []

    def training_step(self, batch, _):
        loss = nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.seen.append(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        data = torch.utils.data.TensorDataset(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g))
        return torch.utils.data.DataLoader(data, batch_size=4)


@pytest.mark.fake_world(4, values="exact")
def test_each_rank_is_its_own_rank_zero_or_not(rank):
    """Every rank of the exact world runs the launch; only rank 0 is rank zero."""
    fabric = Fabric(accelerator="cpu", devices=4, strategy="ddp")
    fabric.launch()
    assert (fabric.global_rank, rank_zero_only.rank, fabric.is_global_zero) == (rank, rank, rank == 0)


@pytest.mark.fake_world(2, values="exact")
def test_trainer_fit_runs_ddp_on_every_rank(collectives):
    """Trainer.fit with DDP: the DistributedSampler gives each rank half of
    the batches, and DDP's all-reduces keep the replicas equal."""
    module = Regression()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    assert len(module.seen) == 2  # 16 samples, batches of 4, half of them on each rank
    assert collectives.count("all_reduce") >= 2  # a gradient all-reduce a step
    weights = [torch.empty(1, 8) for _ in range(2)]
    torch.distributed.all_gather(weights, module.layer.weight.detach())
    assert torch.equal(weights[0], weights[1])  # the replicas stayed equal


@pytest.mark.fake_world(4)
def test_devices_that_disagree_with_the_world_are_refused():
    with pytest.raises(ValueError, match=r"`devices=2`.*does not match the world size \(4\)"):
        Fabric(accelerator="cpu", devices=2, strategy="ddp").launch()
