"""Embedding, footage sources, gallery files and identification (tiny random model, CPU)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from biggait.callbacks import GalleryWriter
from biggait.checkpoint import model_fingerprint
from biggait.compat.opengait import export_lightning_checkpoint
from biggait.embed import main as embed_main
from biggait.evaluation.distance import part_euclidean
from biggait.gallery import Gallery, GalleryError, load_gallery
from biggait.identify import format_table, identify
from biggait.identify import main as identify_main
from biggait.inference import SequencePooler, embed_padded, embed_sequences
from biggait.models import BigGait
from biggait.precision import resolve_precision
from biggait.preprocess import normalize_frames, pad_and_resize, prepare_crops
from biggait.sources import InputError, discover_inputs, read_tracks
from test_checkpoint import TINY


@pytest.fixture(scope="module")
def model() -> BigGait:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BigGait(**TINY).eval()


def _frames(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 64, 32, 3), dtype=np.uint8), np.full(n, 0.45, np.float32)


def _forward(model: BigGait, frames: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    x = normalize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2)[None])
    with torch.no_grad():
        return model(x, torch.from_numpy(ratios)[None])["embeddings"][0].numpy()


# ------------------------------------------------------------------------------------------ embedding
@pytest.mark.parametrize("batch_frames", [1, 3, 64])
def test_chunked_batched_embedding_equals_one_forward_pass(model: BigGait, batch_frames: int) -> None:
    seqs = [_frames(7, 0), _frames(2, 1), _frames(5, 2)]
    out = list(embed_sequences(model, seqs, batch_frames=batch_frames, device="cpu"))
    assert len(out) == 3
    for got, (f, r) in zip(out, seqs):
        np.testing.assert_allclose(got, _forward(model, f, r), rtol=1e-4, atol=1e-5)


def test_precision_auto_follows_the_hardware_and_keeps_the_embeddings(model: BigGait) -> None:
    seqs = [_frames(5, 3)]
    pooler = SequencePooler(model, device=torch.device("cpu"), precision="auto")
    assert pooler.precision.precision == resolve_precision(
        "auto", accelerator="cpu"
    )  # what /proc/cpuinfo has
    fp32 = next(embed_sequences(model, seqs, device="cpu"))
    auto = next(embed_sequences(model, seqs, device="cpu", precision="auto"))
    rel = np.linalg.norm(auto - fp32) / np.linalg.norm(fp32)
    if pooler.dtype is None:  # no bf16 units: auto is fp32, bit for bit
        assert rel == 0
    else:  # autocast really ran; random weights drift more than a trained model (docs/performance.md)
        assert 0 < rel < 0.1
        # and only in the backbone: what a bf16 backbone with an fp32 GRE + GaitBase gives, exactly
        split = BigGait(**{**model.config, "pretrained": None, "backbone_precision": "bf16"}).eval()
        split.load_state_dict(model.state_dict())
        np.testing.assert_array_equal(auto, next(embed_sequences(split, seqs, device="cpu")))
    assert model.eval_precision is None  # the pooler left the caller's model as it was
    with pytest.raises(ValueError, match="precision must be one of"):
        SequencePooler(model, precision="int8")


def test_padded_batch_embedding_equals_the_evaluation_forward(model: BigGait) -> None:
    (a, _), (b, _) = _frames(5, 0), _frames(3, 1)
    frames = torch.zeros(2, 5, 3, 64, 32, dtype=torch.uint8)
    frames[0] = torch.from_numpy(a).permute(0, 3, 1, 2)
    frames[1, :3] = torch.from_numpy(b).permute(0, 3, 1, 2)
    lengths = torch.tensor([5, 3])
    ratios = torch.full((2, 5), 0.45)
    x = normalize_frames(frames, lengths)
    with torch.no_grad():
        want = model(x, ratios, lengths)["embeddings"]
    torch.testing.assert_close(
        embed_padded(model, x, ratios, lengths, batch_frames=2), want, rtol=1e-4, atol=1e-5
    )


def test_embedding_refuses_frames_of_another_size(model: BigGait) -> None:
    frames = np.zeros((2, 128, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="trained on 64x32"):
        list(embed_sequences(model, [(frames, np.full(2, 0.5, np.float32))], device="cpu"))


def test_prepare_crops_pads_any_size_to_the_model_frame() -> None:
    crops = [np.full((100, 40, 3), 200, np.uint8), np.full((50, 60, 3), 100, np.uint8)]
    frames, ratios = prepare_crops(crops, (64, 32))
    assert frames.shape == (2, 64, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(ratios, [0.4, 1.2])
    np.testing.assert_array_equal(frames[0], pad_and_resize(crops[0], (64, 32)))
    assert not frames[0][:, :3].any() and frames[0][:, 6:26].all()  # 25 wide, centred on black


# ---------------------------------------------------------------------------------------------- inputs
def _write_tree(root: Path, ids=("023", "024"), types=("U0_D0", "U1_D1"), n=3) -> None:
    rng = np.random.default_rng(0)
    for i in ids:
        for t in types:
            folder = root / i / t / "1_1"
            folder.mkdir(parents=True)
            for k in range(n):
                cv2.imwrite(str(folder / f"{k:04d}.png"), rng.integers(0, 256, (90, 40, 3), dtype=np.uint8))


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return path


def test_inputs_are_labelled_as_the_cli_contract_says(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree")
    labels = [s.label for s in discover_inputs(tmp_path / "tree")]
    assert labels == ["023/U0_D0/1_1", "023/U1_D1/1_1", "024/U0_D0/1_1", "024/U1_D1/1_1"]
    one = discover_inputs(tmp_path / "tree" / "023" / "U0_D0" / "1_1")
    assert [s.label for s in one] == ["1_1"] and len(one[0].read()) == 3
    video = _write_video(tmp_path / "walk.avi", [np.full((80, 40, 3), 50 * k, np.uint8) for k in range(4)])
    seqs = discover_inputs(video)
    assert [s.label for s in seqs] == ["walk"] and len(seqs[0].read()) == 4


def test_video_with_mot_tracks_gives_one_sequence_per_track(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "scene.avi", [np.full((120, 160, 3), 30, np.uint8)] * 5)
    tracks = tmp_path / "scene.txt"
    lines = [f"{f},1,10,10,20,50,1,-1,-1,-1" for f in range(1, 6)]
    lines += [f"{f},7,150,20,30,60,0.9,-1,-1,-1" for f in range(2, 5)]  # partly outside: clipped to 10 wide
    tracks.write_text("\n".join(lines) + "\n")
    seqs = discover_inputs(video, tracks=tracks)
    assert [s.label for s in seqs] == ["scene/1", "scene/7"]
    crops = [s.read() for s in seqs]
    assert len(crops[0]) == 5 and len(crops[1]) == 3
    assert crops[0][0].shape == (50, 20, 3) and crops[1][0].shape == (60, 10, 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,1,10,10,20\n", "line 1: fewer than 6 fields"),
        ("1,1,10,10,20,50,1\nx,2,1,1,1,1,1\n", "line 2"),
        ("1,1,10,10,-5,50,1\n", "w, h > 0"),
        ("1,1,10,10,nan,50,1\n", "finite"),
        ("", "no track line"),
    ],
)
def test_bad_tracks_lines_are_one_error_naming_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        read_tracks(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_hostile_and_broken_footage_is_one_error(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "v.avi", [np.zeros((60, 80, 3), np.uint8)] * 3)
    outside = tmp_path / "outside.txt"
    outside.write_text("1,1,500,500,20,40,1\n")
    with pytest.raises(InputError, match="lies outside the 80x60 frame"):
        discover_inputs(video, tracks=outside)
    late = tmp_path / "late.txt"
    late.write_text("9,1,1,1,20,40,1\n")
    with pytest.raises(InputError, match="has boxes in frame 9 but video .* has only 3 frames"):
        discover_inputs(video, tracks=late)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="junk.mp4"):
        discover_inputs(junk)[0].read()
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no frames"):
        discover_inputs(tmp_path / "empty")
    bad = tmp_path / "badframes" / "s"
    bad.mkdir(parents=True)
    (bad / "0001.png").write_bytes(b"\x89PNG not really")
    seq = discover_inputs(bad)[0]  # a bad frame is skipped and counted; embed refuses a sequence left empty
    assert seq.read() == [] and seq.lost == [(1, f"frame {bad / '0001.png'}: neither a PNG nor a JPEG")]
    with pytest.raises(InputError, match="does not exist"):
        discover_inputs(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- gallery
def _gallery(n: int = 6, seed: int = 0, model: str = "m1") -> Gallery:
    rng = np.random.default_rng(seed)
    return Gallery(
        rng.normal(size=(n, 16, 16)).astype(np.float32),
        [f"{i % 3:03d}/t{i}/1_1" for i in range(n)],
        [f"{i % 3:03d}" for i in range(n)],
        [f"src{i}" for i in range(n)],
        model,
    )


def test_gallery_round_trip_is_atomic_and_pickle_free(tmp_path: Path) -> None:
    g = _gallery()
    path = g.save(tmp_path / "g.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    back = load_gallery(path)
    np.testing.assert_array_equal(back.embeddings, g.embeddings)
    assert (back.labels, back.identities, back.sources, back.model) == (
        g.labels,
        g.identities,
        g.sources,
        "m1",
    )


@pytest.mark.parametrize("damage", ["truncated", "text", "missing_key", "nan", "wrong_format", "lengths"])
def test_broken_gallery_is_one_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = _gallery().save(tmp_path / "g.npz")
    g = _gallery()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:700])
    elif damage == "text":
        path.write_text("label,identity\n")
    elif damage == "missing_key":
        np.savez(path, embeddings=g.embeddings, model=np.str_("m1"))
    elif damage == "nan":
        g.embeddings[1, 2, 3] = np.nan
        np.savez(path, format=np.str_("biggait-gallery/1"), model=np.str_("m1"), embeddings=g.embeddings,
                 labels=np.array(g.labels), identities=np.array(g.identities), sources=np.array(g.sources))  # fmt: skip
    elif damage == "wrong_format":
        np.savez(path, format=np.str_("other/9"), model=np.str_("m1"), embeddings=g.embeddings,
                 labels=np.array(g.labels), identities=np.array(g.identities), sources=np.array(g.sources))  # fmt: skip
    elif damage == "lengths":
        np.savez(path, format=np.str_("biggait-gallery/1"), model=np.str_("m1"), embeddings=g.embeddings,
                 labels=np.array(g.labels[:2]), identities=np.array(g.identities), sources=np.array(g.sources))  # fmt: skip
    with pytest.raises(GalleryError) as err:
        load_gallery(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------- identify
def test_identify_ranks_by_the_evaluation_distance_with_top_k_and_threshold() -> None:
    gallery, probes = _gallery(9, 0), _gallery(4, 1)
    results = identify(gallery, probes, top_k=3)
    d = part_euclidean(torch.from_numpy(probes.embeddings), torch.from_numpy(gallery.embeddings)).numpy()
    for p, entry in enumerate(results):
        assert entry["probe"] == probes.labels[p]
        order = np.argsort(d[p])[:3]
        assert [m["label"] for m in entry["matches"]] == [gallery.labels[i] for i in order]
        assert [m["identity"] for m in entry["matches"]] == [gallery.identities[i] for i in order]
        np.testing.assert_allclose([m["distance"] for m in entry["matches"]], d[p, order], rtol=1e-6)
    cut = float(np.sort(d[0])[1]) + 1e-6  # keeps exactly two matches of probe 0
    limited = identify(gallery, probes, top_k=3, threshold=cut)
    assert len(limited[0]["matches"]) == 2
    unknown = identify(gallery, probes, top_k=3, threshold=float(d.min()) / 2)
    assert all(e["matches"] == [] for e in unknown)
    assert "unknown" in format_table(unknown)


def test_identify_in_chunks_from_the_file_equals_in_memory(tmp_path: Path) -> None:
    gallery, probes = _gallery(50, 0), _gallery(3, 1)
    path = gallery.save(tmp_path / "g.npz")
    whole = identify(gallery, probes, top_k=5)
    chunked = identify(path, probes, top_k=5, budget=3 * 7)  # 7 gallery rows at a time
    for a, b in zip(chunked, whole):
        assert [m["label"] for m in a["matches"]] == [m["label"] for m in b["matches"]]
        np.testing.assert_allclose(
            [m["distance"] for m in a["matches"]], [m["distance"] for m in b["matches"]], rtol=1e-5
        )


def test_embeddings_of_two_models_are_not_compared(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="different models"):
        identify(_gallery(model="a" * 64), _gallery(model="b" * 64))


def test_embed_and_identify_clis(model: BigGait, tmp_path: Path, capsys) -> None:
    ckpt = export_lightning_checkpoint(model, tmp_path / "m.ckpt")
    _write_tree(tmp_path / "tree")
    assert (
        embed_main([str(ckpt), str(tmp_path / "tree"), "--out", str(tmp_path / "g.npz"), "--device", "cpu"])
        == 0
    )
    probe_dir = tmp_path / "tree" / "024" / "U1_D1" / "1_1"
    args = [str(ckpt), str(probe_dir), "--out", str(tmp_path / "p.npz"), "--identity", "someone"]
    assert embed_main(args) == 0
    g, p = load_gallery(tmp_path / "g.npz"), load_gallery(tmp_path / "p.npz")
    assert (
        g.identities == ["023", "023", "024", "024"] and p.labels == ["1_1"] and p.identities == ["someone"]
    )
    assert g.model == p.model == model_fingerprint(model)
    capsys.readouterr()
    out = tmp_path / "r.json"
    assert (
        identify_main([str(tmp_path / "g.npz"), str(tmp_path / "p.npz"), "--top-k", "2", "--json", str(out)])
        == 0
    )
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data[0]["probe"] == "1_1" and set(data[0]["matches"][0]) == {"label", "identity", "distance"}
    assert data[0]["matches"][0]["label"] == "024/U1_D1/1_1" and data[0]["matches"][0]["distance"] < 1e-3
    assert "024/U1_D1/1_1" in table
    # the same frames give the same embedding through the folder path and the library
    frames, ratios = prepare_crops(discover_inputs(probe_dir)[0].read(), (64, 32))
    np.testing.assert_allclose(p.embeddings[0], _forward(model, frames, ratios), rtol=1e-4, atol=1e-5)
    # --max-frames keeps the first frames only, as the evaluation's frame limit does
    assert embed_main([*args[:2], "--out", str(tmp_path / "p2.npz"), "--max-frames", "2"]) == 0
    first_two = load_gallery(tmp_path / "p2.npz").embeddings[0]
    np.testing.assert_allclose(first_two, _forward(model, frames[:2], ratios[:2]), rtol=1e-4, atol=1e-5)
    assert np.abs(first_two - p.embeddings[0]).max() > 1e-4  # the other frames did count without it


def test_embed_cli_bad_input_is_one_error_line(model: BigGait, tmp_path: Path, capsys) -> None:
    ckpt = export_lightning_checkpoint(model, tmp_path / "m.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        embed_main([str(ckpt), str(tmp_path / "empty"), "--out", str(tmp_path / "g.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exit_.value.code == 2
        and len(err) == 1
        and err[0].startswith("error: ")
        and "holds no frames" in err[0]
    )
    assert not (tmp_path / "g.npz").exists()


def test_trainer_predict_writes_a_gallery_of_the_test_split(
    model: BigGait, tiny_shards: Path, tmp_path: Path
) -> None:
    from biggait.data import GaitDataModule
    from biggait.lit_module import BigGaitModule
    from biggait.viz import read_sequences

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = BigGaitModule(net=TINY, protocol="ccpg")
    module.net.load_state_dict(model.state_dict())
    dm = GaitDataModule(
        root=str(tiny_shards), protocol="ccpg", eval_batch_size=3, num_workers=0, eval_frames_limit=None
    )
    out = tmp_path / "gallery.npz"
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[GalleryWriter(out)], enable_progress_bar=False
    )
    trainer.predict(module, datamodule=dm, return_predictions=False)
    g = load_gallery(out)
    records = read_sequences(tiny_shards, split="test")
    assert g.labels == [f"{r.subject}/{r.seq_type}/{r.view}" for r in records]
    assert g.model == model_fingerprint(model) and not list(tmp_path.glob(".*"))
    want = list(embed_sequences(model, [(r.frames, r.ratios) for r in records], device="cpu"))
    np.testing.assert_allclose(g.embeddings, np.stack(want), rtol=1e-4, atol=1e-5)
