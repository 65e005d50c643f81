"""Dataset roots on another machine: URL / pipe: resolution, their errors, and the same batches as from disk.

The shards are served by a real `http.server` on 127.0.0.1 and read through webdataset's curl and pipe: openers.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from biggait.data import GaitDataModule
from biggait.data.pipeline import BadDataWarning
from biggait.data.roots import DataRoot, serve_directory
from biggait.errors import ConfigError, CorruptDataError, DatasetNotFoundError
from test_data_datamodule import datamodule  # tests/ is on sys.path (rootdir conftest)


def test_roots_resolve_relative_paths_for_files_urls_and_commands() -> None:
    local = DataRoot.parse("data/ccpg")
    assert local.is_local and local.name == "ccpg" and local.locate("train/a.tar") == "data/ccpg/train/a.tar"
    assert DataRoot.parse("file:///srv/ccpg").locate("test/manifest.json") == "/srv/ccpg/test/manifest.json"
    http = DataRoot.parse("http://127.0.0.1:8000/sets/ccpg/")
    assert not http.is_local and http.name == "ccpg"
    assert http.locate("train/manifest.json") == "http://127.0.0.1:8000/sets/ccpg/train/manifest.json"
    signed = DataRoot.parse("https://host/ccpg/{}?sig=abc")
    assert signed.locate("train/x y.tar") == "https://host/ccpg/train/x%20y.tar?sig=abc"
    s3 = DataRoot.parse("pipe:aws s3 cp s3://bucket/ccpg/{} -")
    assert s3.name == "ccpg" and s3.locate("train/a.tar") == "pipe:aws s3 cp s3://bucket/ccpg/train/a.tar -"
    # whatever a name holds, it stays one shell word
    assert (
        DataRoot.parse("pipe:cat /d/{}").locate("train/a;rm -rf ~.tar")
        == "pipe:cat /d/'train/a;rm -rf ~.tar'"
    )


def test_the_documented_hydra_override_gives_a_pipe_root() -> None:
    """docs/1_data.md: `{}` is quoted for Hydra; the override reaches the DataModule as the command."""
    from hydra import compose, initialize_config_dir

    from test_train import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=["data.root='pipe:aws s3 cp s3://b/ccpg/{} -'"])
    assert DataRoot.parse(cfg.data.root).locate("train/x.tar") == "pipe:aws s3 cp s3://b/ccpg/train/x.tar -"


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("s3://bucket/ccpg", r"pipe:aws s3 cp s3://BUCKET/PATH/\{\} -"),
        ("pipe:cat /data/ccpg", r"needs \{\} where the file's path goes"),
        ("nfs://server/ccpg", r"unknown scheme nfs:.*http:"),
        ("  ", "data.root is empty"),
    ],
)
def test_bad_roots_are_one_config_error(spec: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        GaitDataModule(root=spec, protocol="ccpg")
    assert "\n" not in str(info.value)


def _manifest_error(root: str, error=DatasetNotFoundError) -> str:
    with pytest.raises(error) as info:
        GaitDataModule(root=root, protocol="ccpg", dataset="tiny").manifest("train")
    message = str(info.value)
    assert "\n" not in message and "train/manifest.json" in message
    return message


def test_unreachable_roots_name_the_url_and_the_cause(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    with serve_directory(tmp_path / "empty") as url:
        message = _manifest_error(url)
        assert f"cannot read {url}/train/manifest.json: curl exit status 22" in message
        assert "HTTP error" in message and "python -m http.server" in message
    message = _manifest_error(url)  # the server is gone: nothing listens on that port any more
    assert "curl exit status 7" in message and "connection refused" in message
    message = _manifest_error(f"pipe:cat {tmp_path}/empty/{{}}")
    assert "the command exited with status 1" in message
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no curl on the PATH
    message = _manifest_error("http://127.0.0.1:9/ccpg")
    assert "the program 'curl'" in message and "not installed" in message


def test_a_broken_remote_manifest_is_checked_like_a_local_one(tiny_shards: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_shards, root)
    path = root / "train" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["name"] = "$(touch pwned).tar"  # hostile: would run inside a pipe: command
    path.write_text(json.dumps(manifest))
    with serve_directory(root) as url:
        message = _manifest_error(url, CorruptDataError)
        assert "field shards[0].name" in message and url in message
        path.write_text("{not json")
        assert "is not valid JSON" in _manifest_error(url, CorruptDataError)


def _batches(root: str, **options) -> tuple[list[dict], list[str]]:
    """Training then evaluation batches of the test_data_datamodule settings, and the BadDataWarnings."""
    options = {"num_workers": 2} | options
    dm = datamodule(root, frames_per_sequence=4, eval_batch_size=5, load_silhouettes=True, **options)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader()) + list(dm.test_dataloader())
    messages = [str(w.message) for w in caught if issubclass(w.category, BadDataWarning)]
    return batches, messages


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, y[key]), key
            else:
                assert value == y[key], key


def test_http_and_pipe_roots_give_the_local_batches(tiny_shards: Path) -> None:
    local, _ = _batches(str(tiny_shards))
    with serve_directory(tiny_shards) as url:
        remote, _ = _batches(url)
    piped, _ = _batches(f"pipe:cat {tiny_shards}/{{}}")
    assert_same_batches(remote, local)
    assert_same_batches(piped, local)


def test_remote_shard_faults_are_skipped_and_counted_like_local_ones(
    tiny_shards: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_shards, root)
    shards = sorted((root / "test").glob("*.tar"))
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # truncated
    local, _ = _batches(str(root), num_workers=0)  # warnings of worker processes are not caught here
    shards[1].unlink()  # listed in the manifest, 404 on the server (a local root refuses to start)
    with serve_directory(root) as url:
        remote, messages = _batches(url, num_workers=0)
    assert sum(int(b["n_skipped"]) for b in local) > 0
    lost = sum(int(b["n_skipped"]) for b in remote) - sum(int(b["n_skipped"]) for b in local)
    assert lost == json.loads((root / "test" / "manifest.json").read_text())["shards"][1]["n_samples"]
    # cut inside a member ("unexpected end of data") or at a member boundary (fewer samples than listed)
    assert any(shards[0].name in m and "truncated" in m for m in messages)
    assert any(shards[1].name in m and "curl exit status 22" in m for m in messages)
    assert all("\n" not in m for m in messages)


def test_cache_dir_keeps_a_copy_of_each_remote_shard(tiny_shards: Path, tmp_path: Path) -> None:
    source, cache = tmp_path / "source", tmp_path / "cache"
    shutil.copytree(tiny_shards, source)
    root = f"pipe:cat {source}/{{}}"
    local, _ = _batches(str(tiny_shards), num_workers=0)
    first, _ = _batches(root, cache_dir=str(cache), num_workers=0)
    cached = {p.name.split("-", 1)[1] for p in cache.iterdir()}
    # every test shard, and the training shards the 4 steps reached
    assert (
        {p.name for p in tiny_shards.glob("test/*.tar")}
        < cached
        <= {p.name for p in tiny_shards.glob("*/*.tar")}
    )
    for tar in source.glob("*/*.tar"):
        tar.unlink()  # only the manifests are left at the source: every shard must come from the cache
    again, messages = _batches(root, cache_dir=str(cache), num_workers=0)
    assert not messages
    assert_same_batches(first, local)
    assert_same_batches(again, local)


@pytest.mark.slow
def test_train_and_evaluation_from_http_and_pipe_roots_give_the_local_numbers(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """The real entry point (4 steps, then the test evaluation) from a loopback web server and from a pipe:
    command reproduces the run from the local directory exactly."""
    from biggait.train import train
    from test_train import compose_train, steps

    def run(name: str, root: str) -> dict[str, float]:
        overrides = ["logger=none", "callbacks.feature_maps.every_n_steps=0", "data.eval_frames_limit=6"]
        metrics = train(compose_train(tmp_path / name, root, *steps(4, 2), *overrides))
        return {k: v for k, v in metrics.items() if not k.startswith("perf/")}  # wall-clock speeds differ

    local = run("local", str(tiny_shards))
    with serve_directory(tiny_shards) as url:
        remote = run("http", url)
    piped = run("pipe", f"pipe:cat {tiny_shards}/{{}}")
    assert len([k for k in local if k.startswith("test/")]) >= 20 and "train/loss" in " ".join(local)
    assert remote == local
    assert piped == local
