"""OpenGait BigGait state-dict names <-> ours: the one table both the checkpoint importer and
`BigGait.load_mask_branch` use (no model imports here, so models and compat do not import each other)."""

from __future__ import annotations

__all__ = ["branch_key_to_ours", "official_to_ours", "ours_to_official"]

_BRANCH_PARTS = [
    ("bn_s.", "bn_in."),
    ("bn_t.", "bn_out."),
    ("down_sampling.", "down."),
    ("up_sampling.", "up."),
]
# (official prefix, our prefix), most specific first; the same table is used in both directions
_PREFIXES: list[tuple[str, str]] = [
    ("backbone.pos_embed", "backbone.pos_embed"),
    ("backbone.mask_token", "backbone.mask_token"),
    ("backbone.", "backbone.vit."),
    *[
        (f"{off}_Branch.{a}", f"{ours}_branch.{b}")
        for off, ours in (("Mask", "mask"), ("Denoising", "denoising"), ("Appearance", "appearance"))
        for a, b in _BRANCH_PARTS
    ],
    # pre_part is the denoising stem, pre_rgb the appearance stem
    ("gait_net.pre_part.forward_block.conv1.conv.", "head.denoising_stem.conv1."),
    ("gait_net.pre_part.forward_block.", "head.denoising_stem."),
    ("gait_net.pre_rgb.forward_block.conv1.conv.", "head.appearance_stem.conv1."),
    ("gait_net.pre_rgb.forward_block.", "head.appearance_stem."),
    ("gait_net.post_backbone.forward_block.", "head.body."),
    ("gait_net.fusion.conv.forward_block.", "head.fusion.score."),
    ("gait_net.FCs.fc_bin", "head.fcs.weight"),
    ("gait_net.BNNecks.fc_bin", "head.bnneck.weight"),
    ("gait_net.BNNecks.bn1d.", "head.bnneck.bn."),
]


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def official_to_ours(key: str) -> str | None:
    """Official OpenGait name -> our BigGait state-dict name (None if unknown)."""
    return _rename(key, _PREFIXES)


def ours_to_official(key: str) -> str | None:
    return _rename(key, [(b, a) for a, b in _PREFIXES])


def branch_key_to_ours(key: str) -> str:
    """Branch-local official name (`bn_s.running_mean`) -> ours (`bn_in.running_mean`)."""
    return _rename(key, _BRANCH_PARTS) or key
