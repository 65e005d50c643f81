"""GaitDataModule: P x K composition, rank/worker disjointness, eval coverage, bad data, errors."""

from __future__ import annotations

import warnings
from collections import Counter
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from biggait.data import GaitDataModule, SequenceRecord, write_shards
from biggait.data.pipeline import BadDataWarning, iter_shard
from biggait.errors import ConfigError, DatasetNotFoundError
from biggait.preprocess import IMAGENET_MEAN, IMAGENET_STD

H, W = 64, 32


def make_record(spec: tuple) -> SequenceRecord:
    subject, seq_type, view, n, seed = spec
    rng = np.random.default_rng(seed)
    return SequenceRecord(
        subject=subject,
        seq_type=seq_type,
        view=view,
        frames=rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),  # noise: every frame is unique
        ratios=rng.uniform(0.3, 0.7, n).astype(np.float32),
        silhouettes=(rng.random((n, H, W)) > 0.5).astype(np.uint8) * 255,
    )


def build(root, *, n_subjects=6, per_subject=4, short_subject=None, shard_size=4, test_shard_size=3):
    """Train and test splits; `short_subject` gets a single training sequence; frame counts 5..12."""

    def specs(offset):
        out = []
        for s in range(n_subjects):
            k_max = 1 if s == short_subject else per_subject
            for k in range(k_max):
                out.append(
                    (
                        f"{s + offset:03d}",
                        f"nm-{k:02d}",
                        f"{(s + k) % 3:03d}",
                        5 + (3 * s + k) % 8,
                        1000 * (s + offset) + k,
                    )
                )
        return out

    train, test = specs(0), specs(100)
    kw = dict(workers=1, frame_size=(H, W), progress=False)
    write_shards(
        train, make_record, root, dataset="toy", split="train", shard_size=shard_size, shuffle_seed=0, **kw
    )
    write_shards(
        test,
        make_record,
        root,
        dataset="toy",
        split="test",
        shard_size=test_shard_size,
        shuffle_seed=None,
        **kw,
    )
    return train, test


def seq_id(spec_or_batch, i=None) -> tuple[str, str, str]:
    if i is None:
        return spec_or_batch[0], spec_or_batch[1], spec_or_batch[2]
    b = spec_or_batch
    return b["subjects"][i], b["types"][i], b["views"][i]


def datamodule(root, **kw) -> GaitDataModule:
    options = dict(
        root=str(root),
        protocol="ccpg",
        frames_per_sequence=6,
        ids_per_batch=3,
        seqs_per_id=2,
        steps_per_epoch=4,
        num_workers=0,
        shuffle_buffer=8,
        flip_prob=0.5,
        seed=0,
    )
    return GaitDataModule(**(options | kw))


def test_pk_batches_compose_identities_and_sample_real_frames(tmp_path) -> None:
    train, _ = build(tmp_path, short_subject=2)
    records = {seq_id(s): make_record(s) for s in train}
    lookup = {}  # frame bytes -> (sequence, index, flipped)
    for key, rec in records.items():
        for t, f in enumerate(rec.frames):
            lookup[f.tobytes()] = (key, t, False)
            lookup[np.ascontiguousarray(f[:, ::-1]).tobytes()] = (key, t, True)
    P, K, S = 3, 3, 6
    dm = datamodule(tmp_path, ids_per_batch=P, seqs_per_id=K, frames_per_sequence=S, steps_per_epoch=12)
    dm.setup("fit")
    assert dm.num_classes == 6 and dm.protocol == "ccpg"
    subjects = sorted({s[0] for s in train})
    flips, short_seen, distinct_groups = Counter(), False, 0
    for batch in dm.train_dataloader():
        assert batch["frames"].shape == (P * K, S, 3, H, W) and batch["frames"].dtype == torch.uint8
        assert batch["ratios"].shape == (P * K, S) and batch["ratios"].dtype == torch.float32
        assert batch["labels"].dtype == torch.int64 and batch["n_skipped"].item() == 0
        counts = Counter(batch["labels"].tolist())
        assert len(counts) == P and set(counts.values()) == {K}
        for i in range(P * K):
            key = seq_id(batch, i)
            assert subjects[batch["labels"][i]] == key[0]
            hits = [lookup[f.permute(1, 2, 0).numpy().tobytes()] for f in batch["frames"][i]]
            assert {h[0] for h in hits} == {key}  # every frame belongs to the labelled sequence
            assert len({h[2] for h in hits}) == 1  # one flip decision for the whole sequence
            flips[hits[0][2]] += 1
            n = records[key].n_frames
            ts = [h[1] for h in hits]
            if n >= S:
                assert len(set(ts)) == S  # without replacement when long enough
            np.testing.assert_allclose(batch["ratios"][i].numpy(), records[key].ratios[ts])
            short_seen |= key[0] == "002"
        for label in counts:
            distinct_groups += (
                len({seq_id(batch, i) for i in range(P * K) if batch["labels"][i] == label}) == K
            )
        if "002" in batch["subjects"]:  # one sequence only: K with replacement
            assert len({seq_id(batch, i) for i in range(P * K) if batch["subjects"][i] == "002"}) == 1
    assert flips[True] > 0 and flips[False] > 0
    assert short_seen
    assert distinct_groups > 0  # K different sequences of an identity when it has enough


def _first_pass(keys: list) -> list:
    seen = []
    for k in keys:
        if k in seen:
            break
        seen.append(k)
    return seen


@pytest.mark.parametrize("shard_size", [2, 10], ids=["shards>=consumers", "fewer-shards-than-consumers"])
def test_two_ranks_two_workers_read_every_sample_once_per_pass(tmp_path, shard_size: int) -> None:
    train, _ = build(tmp_path, n_subjects=6, per_subject=4, shard_size=shard_size)
    n_shards = -(-len(train) // shard_size)
    assert (n_shards >= 4) == (shard_size == 2)
    per_worker_steps = 2 * len(train) // 4 + 2  # beyond one pass of any consumer
    streams = []
    for rank in range(2):
        # P = K = 1 with a one-sample buffer makes every batch one sample, in stream order.
        dm = datamodule(
            tmp_path,
            ids_per_batch=1,
            seqs_per_id=1,
            shuffle_buffer=1,
            frames_per_sequence=2,
            steps_per_epoch=2 * per_worker_steps,
            num_workers=2,
        )
        dm.setup("fit")
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)  # rank comes from the trainer
        dm.setup("fit")
        assert (dm.rank, dm.world_size) == (rank, 2)
        batches = list(dm.train_dataloader())
        assert len(batches) == 2 * per_worker_steps
        for worker in range(2):  # the DataLoader returns workers' batches round robin
            streams.append([seq_id(b, 0) for b in batches[worker::2]])
    passes = [_first_pass(s) for s in streams]
    everything = [k for p in passes for k in p]
    assert len(everything) == len(set(everything)), "a sample was read by two consumers"
    assert set(everything) == {seq_id(s) for s in train}, "a sample was read by no consumer"
    assert all(len(p) > 0 for p in passes), "a consumer starved"


def test_eval_covers_every_sequence_once_in_order(tmp_path) -> None:
    _, test = build(tmp_path, test_shard_size=2)
    records = {seq_id(s): make_record(s) for s in test}
    limit, got = 9, Counter()
    for rank in range(2):
        dm = datamodule(
            tmp_path, eval_frames_limit=limit, eval_batch_size=3, num_workers=2, load_silhouettes=True
        )
        dm.set_rank(rank, 2)
        dm.setup("test")
        for batch in dm.test_dataloader():
            n = len(batch["subjects"])
            assert batch["frames"].shape[0] == n and batch["lengths"].shape == (n,)
            for i in range(n):
                key, length = seq_id(batch, i), int(batch["lengths"][i])
                got[key] += 1
                rec = records[key]
                assert length == min(rec.n_frames, limit)
                frames = batch["frames"][i].permute(0, 2, 3, 1).numpy()
                np.testing.assert_array_equal(frames[:length], rec.frames[:length])  # ordered, truncated
                assert not frames[length:].any()  # zero padding
                np.testing.assert_array_equal(
                    batch["silhouettes"][i, :length].numpy(), rec.silhouettes[:length]
                )
                np.testing.assert_allclose(batch["ratios"][i, :length].numpy(), rec.ratios[:length])
                assert dm.test_subjects[batch["labels"][i]] == key[0]
    assert got == Counter({k: 1 for k in records})


def test_eval_with_fewer_shards_than_consumers_and_no_limit(tmp_path) -> None:
    _, test = build(tmp_path, test_shard_size=100)  # one shard, four consumers
    got = Counter()
    for rank in range(2):
        dm = datamodule(tmp_path, eval_frames_limit=None, num_workers=2)
        dm.set_rank(rank, 2)
        for batch in dm.val_dataloader():
            got[seq_id(batch, 0)] += 1
            assert (
                batch["lengths"].item()
                == make_record(next(s for s in test if seq_id(s) == seq_id(batch, 0))).n_frames
            )
    assert got == Counter({seq_id(s): 1 for s in test})


def _corrupt(tmp_path) -> tuple[str, str, tuple, tuple]:
    """Break one frame and drop one meta.json in test shard 1; truncate the last test shard."""
    import webdataset as wds

    split = tmp_path / "test"
    bad = split / "toy-test-000001.tar"
    samples = list(iter_shard(str(bad)))
    (k0, f0), (k1, f1) = samples[0], samples[1]
    f0 = dict(f0) | {"f0001.png": b"not a png"}
    f1 = {k: v for k, v in f1.items() if k != "meta.json"}
    with open(bad, "wb") as stream, wds.TarWriter(stream, encoder=False) as writer:
        for key, fields in [(k0, f0), (k1, f1), *samples[2:]]:
            writer.write({"__key__": key, **fields})
    truncated = sorted(split.glob("*.tar"))[-1]  # the last: its skips come after the last batch
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return bad.name, truncated.name, k0, k1


def test_corrupt_shards_frames_and_fields_are_skipped_counted_and_reported(tmp_path) -> None:
    _, test = build(tmp_path, test_shard_size=3)
    bad, truncated, k0, k1 = _corrupt(tmp_path)
    dm = datamodule(tmp_path, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.test_dataloader())
    messages = [str(w.message) for w in caught if issubclass(w.category, BadDataWarning)]
    assert any(bad in m and "frame 1" in m for m in messages)
    assert any(bad in m and "meta.json" in m for m in messages)
    assert any(truncated in m for m in messages)
    skipped = sum(int(b["n_skipped"]) for b in batches)
    seen = [seq_id(b, 0) for b in batches]
    assert len(seen) == len(set(seen))
    # Every sequence not evaluated is counted, those lost with a truncated shard's tail too (not just "1").
    assert skipped == len(test) - len(seen) > len(messages) >= 3
    intact = {seq_id(s) for i, s in enumerate(test) if i // 3 not in (1, (len(test) - 1) // 3)}
    assert intact <= set(seen) and len(seen) <= len(test) - 2
    # Training keeps going over the same damage and reports it.
    train_root = tmp_path / "as_train"
    (train_root).mkdir()
    (tmp_path / "test").rename(train_root / "train")
    dm = datamodule(train_root, ids_per_batch=2, seqs_per_id=2, steps_per_epoch=6, shuffle_buffer=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        batches = list(dm.train_dataloader())
    assert len(batches) == 6 and sum(int(b["n_skipped"]) for b in batches) >= 3


def test_seeded_stream_is_deterministic_and_epochs_continue(tmp_path) -> None:
    build(tmp_path)

    def run(seed, workers):
        loader = datamodule(tmp_path, seed=seed, num_workers=workers).train_dataloader()
        return [
            [(seq_id(b, i), b["frames"][i].sum().item()) for i in range(6)]
            for epoch in range(2)
            for b in loader
        ]

    first = run(0, 2)
    assert first == run(0, 2)
    assert first != run(1, 2)
    assert first[:4] != first[4:]  # epoch 2 continues the stream instead of replaying epoch 1
    single = run(0, 0)
    assert single == run(0, 0) and single[:4] != single[4:]


def test_normalisation_on_the_device_and_padding_stays_zero(tmp_path) -> None:
    build(tmp_path)
    dm = datamodule(tmp_path, eval_batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    raw = batch["frames"].clone()
    out = dm.on_after_batch_transfer(batch, 0)["frames"]
    assert out.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    expected = (raw.float() / 255 - mean) / std
    for i, n in enumerate(batch["lengths"].tolist()):
        torch.testing.assert_close(out[i, :n], expected[i, :n])
        assert not out[i, n:].any()
    assert (batch["lengths"] < out.shape[1]).any()  # the padding branch was exercised


def test_missing_data_and_bad_options_are_clear_errors(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"does not exist.*make data DATASET=nowhere"):
        datamodule(tmp_path / "nowhere").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"train does not exist.*make data DATASET=ccpg"):
        datamodule(tmp_path / "empty", dataset="ccpg").setup("fit")
    (tmp_path / "empty" / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no shards"):
        datamodule(tmp_path / "empty").num_classes  # noqa: B018
    build(tmp_path / "ok")
    with pytest.raises(ConfigError, match="ids_per_batch=7 > 6 training identities"):
        datamodule(tmp_path / "ok", ids_per_batch=7).setup("fit")
    with pytest.raises(ConfigError, match="protocol"):
        datamodule(tmp_path / "ok", protocol="")


class _Probe(__import__("lightning").LightningModule):
    """Minimal module recording what reaches the steps after the DataModule's device hook."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list] = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(
            (batch["frames"].dtype, tuple(batch["frames"].shape), batch["labels"].tolist())
        )
        self.log("data/skipped", batch["n_skipped"].float(), reduce_fx="sum")
        return (self.weight * batch["frames"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append((batch["frames"].dtype, batch["subjects"][0], int(batch["lengths"][0])))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_runs_the_streams_with_the_device_hook(tmp_path) -> None:
    import lightning as L

    _, test = build(tmp_path)
    dm = datamodule(tmp_path, steps_per_epoch=3)
    probe = _Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, datamodule=dm)
    assert len(probe.seen["train"]) == 6  # steps_per_epoch batches per epoch
    assert all(d == torch.float32 and s == (6, 6, 3, H, W) for d, s, _ in probe.seen["train"])
    assert sorted(sub for _, sub, _ in probe.seen["val"]) == sorted(
        [s[0] for s in test] * 2
    )  # two validations


class _KeyRecorder(_Probe):
    """Writes the sequences each rank trained on to `<out>/rank<r>.json`."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def training_step(self, batch, batch_idx):
        self.seen["train"].append([batch["subjects"][0], batch["types"][0], batch["views"][0]])
        return (self.weight * batch["frames"].mean()).sum()

    def on_train_end(self) -> None:
        import json
        from pathlib import Path

        rank = self.trainer.datamodule.rank
        Path(self.out, f"rank{self.global_rank}.json").write_text(
            json.dumps({"dm_rank": rank, "keys": self.seen["train"]})
        )


@pytest.mark.slow
def test_ddp_spawn_ranks_take_their_rank_from_the_trainer(tmp_path) -> None:
    import json

    import lightning as L

    train, _ = build(tmp_path / "data", shard_size=2)
    torch.set_num_threads(1)
    dm = datamodule(
        tmp_path / "data",
        ids_per_batch=1,
        seqs_per_id=1,
        shuffle_buffer=1,
        frames_per_sequence=2,
        steps_per_epoch=len(train) // 2 + 1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(_KeyRecorder(str(tmp_path)), datamodule=dm)
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["dm_rank"] for r in runs] == [0, 1]
    passes = [_first_pass([tuple(k) for k in r["keys"]]) for r in runs]
    assert not set(passes[0]) & set(passes[1])
    assert set(passes[0]) | set(passes[1]) == {seq_id(s) for s in train}


def test_color_jitter_changes_colours_per_sequence_alike_for_all_frames(tmp_path) -> None:
    import albumentations as A  # noqa: F401  (the transform under test)

    from biggait.data.pipeline import ShardInfo, TrainStream

    frames = np.zeros((6, 16, 8, 3), np.uint8)
    frames[:, 4:12, 2:6] = (200, 40, 40)
    specs = [(s, t) for s in range(3) for t in range(2)]
    from biggait.data.records import SequenceRecord
    from biggait.data.shards import read_manifest, write_shards

    def load(spec):
        return SequenceRecord(
            f"{spec[0]:03d}", f"t{spec[1]}", "v", frames.copy(), np.full(6, 0.5, np.float32)
        )

    write_shards(specs, load, tmp_path, dataset="x", split="train", shard_size=6, progress=False)
    shards = [
        ShardInfo(str(tmp_path / "train" / s["name"]), s["n_samples"])
        for s in read_manifest(tmp_path / "train")["shards"]
    ]
    labels = {f"{i:03d}": i for i in range(3)}
    common = dict(
        labels=labels,
        frames_per_sequence=6,
        ids_per_batch=3,
        seqs_per_id=2,
        steps_per_epoch=4,
        shuffle_buffer=6,
        flip_prob=0.0,
    )
    plain = next(iter(TrainStream(shards, color_jitter=0.0, **common)))["frames"]
    jittered = torch.cat([b["frames"] for b in TrainStream(shards, color_jitter=1.0, **common)])
    assert torch.all(plain[:, :, :, 4:12, 2:6] == torch.tensor([200, 40, 40])[None, None, :, None, None])
    person = jittered[:, :, :, 4:12, 2:6].float()
    # the same colour on every frame of a sequence, different colours across sequences
    assert torch.all(person.std(dim=1) == 0)
    assert len({tuple(c.tolist()) for c in person[:, 0, :, 0, 0]}) > 3
    assert torch.all(jittered[:, :, :, :4] == 0)  # the black pad stays black


@pytest.mark.parametrize(("test_shard_size", "eval_batch_size"), [(3, 2), (100, 3)])
def test_eval_loader_length_is_the_number_of_batches_it_yields(
    tmp_path, test_shard_size, eval_batch_size
) -> None:
    """len() of the test loader (the progress bar's total) equals what each rank's workers really yield."""
    build(tmp_path, test_shard_size=test_shard_size)  # 24 test sequences: 8 shards, or 1 shard < 4 consumers
    for rank in range(2):
        dm = datamodule(tmp_path, num_workers=2, eval_batch_size=eval_batch_size)
        dm.set_rank(rank, 2)
        loader = dm.test_dataloader()
        assert len(loader) == sum(1 for _ in loader) > 0


def test_a_training_pass_without_samples_or_identities_stops_with_one_error(tmp_path) -> None:
    from biggait.data.pipeline import TrainStream
    from biggait.errors import CorruptDataError

    build(tmp_path)
    dm = datamodule(tmp_path)
    shards = dm.train_dataset().shards
    # every sample readable, but only two of the subjects are known: fewer than P = 3 identities
    stream = TrainStream(
        shards, labels={"000": 0, "001": 1}, ids_per_batch=3, seqs_per_id=1, shuffle_buffer=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        with pytest.raises(ConfigError, match="sees 2 identities, fewer than ids_per_batch=3"):
            next(iter(stream))
        for shard in shards:
            with open(shard.path, "wb") as broken:
                broken.write(b"not a tar file" * 100)
        with pytest.raises(CorruptDataError, match="no readable training sample in .*toy-train-000000.tar"):
            next(iter(dm.train_dataloader()))


@pytest.mark.parametrize(("precision", "dtype"), [("64-true", torch.float64), ("32-true", torch.float32)])
def test_frames_reach_the_model_in_the_trainers_precision(tmp_path, precision, dtype) -> None:
    # Lightning's convert_input runs before on_after_batch_transfer, while the frames are still uint8.
    build(tmp_path)
    dm = datamodule(tmp_path, eval_batch_size=2)
    dm.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    batch = next(iter(dm.val_dataloader()))
    raw = batch["frames"].clone()
    out = dm.on_after_batch_transfer(batch, 0)["frames"]
    assert out.dtype == dtype
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 1, 3, 1, 1)
    n = batch["lengths"][0].item()
    expected = ((raw.double() / 255 - mean) / std)[0, :n].to(dtype)
    torch.testing.assert_close(out[0, :n], expected, rtol=0, atol=0 if dtype == torch.float64 else 1e-6)
