"""The cross-rank triplet loss gives the single-process full-batch gradient (2 gloo processes, CPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from biggait.lit_module import gather_for_triplet
from biggait.losses import cross_entropy_loss, triplet_loss

N_PER_RANK, FEATURES, CHANNELS, PARTS, CLASSES = 6, 12, 8, 4, 3


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * N_PER_RANK, FEATURES, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2])
    return x, labels


class _Embedder(L.LightningModule):
    """A linear embedding trained for one SGD step on the BigGait losses (triplet gathered across ranks)."""

    def __init__(self, *, gather: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Linear(FEATURES, CHANNELS * PARTS)
        self.classifier = nn.Linear(CHANNELS, CLASSES, bias=False)
        self.gather = gather

    def training_step(self, batch, batch_idx):
        x, labels = _batch()
        if self.trainer.world_size > 1:  # each rank holds its own half of the global batch
            r = self.global_rank
            x, labels = (
                x[r * N_PER_RANK : (r + 1) * N_PER_RANK],
                labels[r * N_PER_RANK : (r + 1) * N_PER_RANK],
            )
        emb = self.net(x).view(-1, CHANNELS, PARTS)
        logits = torch.einsum("ncp,kc->nkp", emb, self.classifier.weight)
        all_emb, all_labels = gather_for_triplet(self, emb, labels) if self.gather else (emb, labels)
        return triplet_loss(all_emb, all_labels, 0.2) + cross_entropy_loss(logits, labels, 16.0, 0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([0], batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _fit(module: L.LightningModule, **trainer_kwargs) -> dict[str, torch.Tensor]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_two_process_gradient_equals_single_process() -> None:
    initial = {k: v.clone() for k, v in _Embedder().state_dict().items()}
    single = _fit(_Embedder(), devices=1)
    ddp = _fit(_Embedder(), devices=2, strategy="ddp_spawn")
    ddp_local = _fit(_Embedder(gather=False), devices=2, strategy="ddp_spawn")
    for name, value in single.items():
        assert not torch.allclose(value, initial[name]), f"{name} did not move: the step had no effect"
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6, msg=f"{name} differs")
    # Without the gather the triplet only sees half the pairs: the update must differ (the check can fail).
    assert not torch.allclose(ddp_local["net.weight"], single["net.weight"], atol=1e-5)


@pytest.mark.slow
def test_module_ddp_spawn_evaluation_equals_single_process(tiny_shards, tmp_path) -> None:
    """BigGaitModule tested by 2 spawned gloo processes (each reading its own shards, embeddings gathered
    by the metric) gives exactly the 1-process numbers on the same weights."""
    import json

    from biggait.callbacks import EvaluationReport
    from biggait.data import GaitDataModule
    from biggait.lit_module import BigGaitModule

    model = dict(
        backbone="tiny",
        num_classes=6,
        image_size=(112, 56),
        map_size=(32, 16),
        channels=(8, 16, 32, 64),
        fusion_squeeze=4,
        embed_dim=16,
    )
    torch.manual_seed(0)
    module = BigGaitModule(net=model, protocol="ccpg")
    numbers = {}
    for name, kwargs in (("single", dict(devices=1)), ("spawn", dict(devices=2, strategy="ddp_spawn"))):
        dm = GaitDataModule(
            root=str(tiny_shards),
            protocol="ccpg",
            eval_batch_size=3,
            num_workers=0,
            eval_frames_limit=6,
            load_silhouettes=True,
        )
        trainer = L.Trainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[EvaluationReport(output_dir=str(tmp_path / name))],
            **kwargs,
        )
        trainer.test(module, datamodule=dm)
        numbers[name] = json.loads(next((tmp_path / name).glob("test-step*/results.json")).read_text())[
            "metrics"
        ]
    assert len(numbers["single"]) >= 20
    assert numbers["spawn"] == pytest.approx(numbers["single"], abs=1e-6)
