"""Official BiggerGait checkpoints (OpenGait `BiggerGait_DINOv2.py`) in and out: strict import with sizes from the
tensors, the paper-size key list, parameter counts, export back to official names, the CLI, and architecture
mix-ups (one error line each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biggait.checkpoint import CheckpointError, load_model
from biggait.compat.biggergait import BiggerGaitCheckpointError, official_biggergait_state
from biggait.compat.opengait import export_lightning_checkpoint, export_opengait_state_dict, main
from biggait.formats import ArchitectureError, architecture_of
from biggait.lit_module import load_module
from biggait.models import BigGait, BiggerGait

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL = FIXTURES / "official_biggergait"
DTYPES = {"float32": torch.float32, "int64": torch.int64}
SMALL = {"image_size": (224, 112), "map_size": (32, 16)}  # what the recording's shapes cannot tell


def paper_layout() -> dict[str, tuple[list[int], torch.dtype]]:
    layout = {}
    for line in (OFFICIAL / "paper_size_state_dict.tsv").read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        layout[key] = ([int(s) for s in shape.strip("[]").split(",") if s.strip()], DTYPES[dtype])
    return layout


def random_paper_state() -> dict[str, torch.Tensor]:
    """Random tensors of the official paper-size shapes; `Gait_List.<g>` is `real_gait.<g>` (12 groups, 12
    heads), the same tensors, as `state_dict()` of the official `Baseline_Share` gives them."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, (shape, dtype) in paper_layout().items():
        if key.startswith("Gait_Net.Gait_List."):
            continue
        if dtype == torch.int64:
            state[key] = torch.randint(0, 30_000, shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g)
    for key in paper_layout():
        if key.startswith("Gait_Net.Gait_List."):
            state[key] = state[key.replace("Gait_List", "real_gait")]
    return state


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = random_paper_state()
    path = tmp_path_factory.mktemp("paper") / "BiggerGait__SmallDINOv2_Gaitbase-30000.pt"
    torch.save({"model": state, "iteration": 30000}, path)
    return path, state


def test_paper_size_official_state_dict_loads_strictly(paper_checkpoint) -> None:
    path, state = paper_checkpoint
    model = load_model(path)
    assert isinstance(model, BiggerGait)
    assert (model.num_groups, model.head_of_group) == (12, list(range(12)))
    assert model.config["backbone"] == "vits14" and model.config["num_classes"] == 100
    assert (model.config["parts"], model.config["embed_dim"], model.config["humanspace_dim"]) == (32, 256, 16)
    ours = model.state_dict()
    layer = "Backbone.encoder.layer.5.attention.attention."
    qkv = torch.cat([state[f"{layer}{n}.weight"] for n in ("query", "key", "value")])
    assert torch.equal(ours["backbone.vit.blocks.5.attn.qkv.weight"], qkv)
    assert torch.equal(ours["backbone.pos_embed"], state["Backbone.embeddings.position_embeddings"])
    assert torch.equal(ours["heads.7.fcs.weight"], state["Gait_Net.real_gait.7.FCs.fc_bin"])
    assert torch.equal(ours["human_space.11.project.weight"], state["HumanSpace_Conv.11.4.weight"])
    # and back: every official name and shape, the shared heads saved twice
    exported = export_opengait_state_dict(model)
    assert {k: list(v.shape) for k, v in exported.items()} == {k: s for k, (s, _) in paper_layout().items()}
    assert all(torch.equal(exported[k], v) for k, v in state.items())


def test_parameter_counts_at_paper_size_equal_the_official_models(paper_checkpoint) -> None:
    """Counted by scripts/record_official_biggergait.py on the official models (142.2M and 42.8M)."""
    official = json.loads((OFFICIAL / "paper_size_parameters.json").read_text())
    full = load_model(paper_checkpoint[0])
    assert sum(p.numel() for p in full.parameters()) == official["biggergait"]
    del full
    grouped = BiggerGait(pretrained="random", mask_branch="random", layers_per_group=2, gait_heads=2)
    assert sum(p.numel() for p in grouped.parameters()) == official["biggergait_group"]


def test_recorded_checkpoint_round_trips_to_the_same_tensors() -> None:
    official = torch.load(OFFICIAL / "checkpoint.pt", weights_only=True)["model"]
    exported = export_opengait_state_dict(load_model(OFFICIAL / "checkpoint.pt", **SMALL))
    assert sorted(exported) == sorted(official)
    assert all(torch.equal(exported[k], official[k]) for k in official)


_TWIN = "Gait_Net.Gait_List.1.FCs.fc_bin"


def _broken(tmp_path: Path, edit) -> Path:
    blob = torch.load(OFFICIAL / "checkpoint.pt", weights_only=True)
    edit(blob["model"])
    path = tmp_path / "edited.pt"
    torch.save(blob, path)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("HumanSpace_Conv.2.4.bias"), "1 missing"),
        (lambda s: s.pop("Backbone.encoder.layer.1.attention.attention.key.weight"), "missing"),
        (lambda s: s.__setitem__("Backbone.pooler.weight", torch.zeros(2)), "1 unexpected"),
        # a new tensor: in the file the two copies share one storage, as the official state_dict() gives them
        (lambda s: s.__setitem__(_TWIN, s[_TWIN] + 1.0), "Gait_List.1.FCs.fc_bin differs"),
        (lambda s: s.__setitem__("Gait_Net.Gait_List.9.FCs.fc_bin", torch.zeros(1)), "no counterpart"),
        (lambda s: s.__setitem__("HumanSpace_Conv.1.4.weight", torch.zeros(3, 16, 1, 1)), "shape mismatch"),
        (lambda s: s.pop("Gait_Net.real_gait.1.FCs.fc_bin"), "lacks|missing|no counterpart"),
    ],
)
def test_import_is_strict_with_one_error_line(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(_broken(tmp_path, edit), **SMALL)
    assert "\n" not in str(err.value)


def test_heads_that_do_not_divide_the_groups_are_refused(tmp_path: Path) -> None:
    # 4 groups but 3 heads: no official configuration (OpenGait asserts it), an error line, not a model
    def add_head(state: dict) -> None:
        for key in [k for k in state if k.startswith("Gait_Net.real_gait.1.")]:
            state[key.replace("real_gait.1.", "real_gait.2.")] = state[key].clone()

    with pytest.raises(CheckpointError, match="not a BiggerGait"):
        load_model(_broken(tmp_path, add_head), **SMALL)


def test_cli_converts_and_the_module_restores(tmp_path: Path) -> None:
    out = tmp_path / "converted.ckpt"
    assert (
        main([str(OFFICIAL / "checkpoint.pt"), str(out), "--image-size", "224x112", "--map-size", "32x16"])
        == 0
    )
    blob = torch.load(out, weights_only=True)
    assert architecture_of(blob) == "biggergait" and blob["hyper_parameters"]["architecture"] == "biggergait"
    module = load_module(out, protocol="ccpg")
    direct = load_model(OFFICIAL / "checkpoint.pt", **SMALL)
    frames = torch.randn(1, 2, 3, 64, 32)
    with torch.no_grad():
        a = module.net.eval()(frames)["embeddings"]
        b = direct(frames)["embeddings"]
    assert torch.equal(a, b)
    export_lightning_checkpoint(direct, tmp_path / "again.ckpt")
    assert isinstance(load_model(tmp_path / "again.ckpt"), BiggerGait)


def test_architecture_mix_ups_give_one_error_line(tmp_path: Path) -> None:
    biggergait = OFFICIAL / "checkpoint.pt"
    biggait = FIXTURES / "official_tiny" / "checkpoint.pt"
    with pytest.raises(
        ArchitectureError, match="is a BiggerGait checkpoint, but this needs a BigGait one"
    ) as err:
        load_model(biggergait, architecture="biggait")
    assert "\n" not in str(err.value)
    with pytest.raises(ArchitectureError, match="is a BigGait checkpoint, but this needs a BiggerGait one"):
        load_model(biggait, architecture="biggergait")
    with pytest.raises(BiggerGaitCheckpointError, match="not an OpenGait BiggerGait state dict"):
        official_biggergait_state(torch.load(biggait, weights_only=True)["model"])
    assert isinstance(load_model(biggait, padding_resize_crop="center"), BigGait)


def test_converted_checkpoint_evaluates(tiny_shards: Path, tmp_path: Path) -> None:
    """`make eval CKPT=<converted BiggerGait> MODEL=biggergait` on the synthetic world (a BigGait model group
    instead is one error line: tests/test_biggergait_use.py)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from biggait.eval import evaluate_checkpoint

    ckpt = tmp_path / "converted.ckpt"
    main([str(OFFICIAL / "checkpoint.pt"), str(ckpt), "--image-size", "224x112", "--map-size", "32x16"])
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(
            config_name="eval",
            overrides=[
                "experiment=synthetic",
                "model=biggergait_tiny",
                "data.eval_batch_size=4",
                "data.num_workers=0",
                f"ckpt_path={ckpt}",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
        cfg.data.root = str(tiny_shards)
    metrics = evaluate_checkpoint(cfg)
    assert "test/CL" in metrics and "test/foreground_iou" in metrics
    assert cfg.model.architecture == "biggergait"
