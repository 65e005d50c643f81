"""Gait sequence records, tar shards and the streaming `GaitDataModule`."""

from biggait.data.datamodule import GaitDataModule, normalize_frames
from biggait.data.records import SequenceRecord
from biggait.data.shards import read_manifest, write_shards

__all__ = ["GaitDataModule", "SequenceRecord", "normalize_frames", "read_manifest", "write_shards"]
