"""The synthetic gait world: procedural walkers rendered as CCPG-style RGB person crops (data_prep/README.md).

Identity = latent body shape + gait style; nuisance per sequence = outfit, bag, background, lighting,
scale/position jitter, start phase and length. Naming and protocol follow CCPG (OpenGait `evaluate_CCPG`).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from biggait.data.records import SequenceRecord
from biggait.data.shards import write_shards
from biggait.errors import ConfigError
from biggait.evaluation.protocols import CCPG_TYPES
from biggait.io import atomic_write_bytes
from biggait.preprocess import pad_and_resize

__all__ = [
    "CCPG_TYPES",
    "SyntheticConfig",
    "background_crop",
    "gait_parameters",
    "identity_parameters",
    "list_sequences",
    "main",
    "prepare",
    "render_scene",
    "render_sequence",
    "Scene",
    "write_raw_crops",
    "write_scene_video",
]


# Label-map ids of the drawn parts (0 = background).
_SKIN, _HAIR, _UPPER, _LOWER, _SHOE, _BAG = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and difficulty knobs of the synthetic world; every sequence is a pure function of these."""

    seed: int = 0
    num_train_ids: int = 32
    num_test_ids: int = 16
    views: tuple[int, ...] = (30, 60, 90, 120)  # camera azimuth (deg) to the walking direction; 90 = side
    types: tuple[str, ...] = CCPG_TYPES
    seqs_per_type: int = 1
    frame_size: tuple[int, int] = (128, 64)  # (H, W) after CCPG's pad-and-resize (256x128 for the paper path)
    length: tuple[int, int] = (30, 50)  # frames per sequence, inclusive range
    canvas: int = 192  # square render canvas before cropping (px)
    shape_jitter: float = 0.02  # per-sequence relative jitter of the identity's body and gait parameters

    def __post_init__(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ConfigError("SyntheticConfig needs at least one train and one test identity")
        if len(self.views) < 2:
            raise ConfigError(
                "SyntheticConfig.views needs >= 2 views (the protocol excludes identical views)"
            )
        missing = set(CCPG_TYPES) - set(self.types)
        if missing:
            raise ConfigError(
                f"SyntheticConfig.types must include the CCPG protocol types; missing {sorted(missing)}"
            )
        if not 2 <= self.length[0] <= self.length[1]:
            raise ConfigError(
                f"SyntheticConfig.length must be (min, max) with 2 <= min <= max, got {self.length}"
            )

    def view_name(self, view: int) -> str:
        """CCPG-style view folder name `<cam>_<azimuth>`; the protocol uses the part before '_'."""
        return f"{self.views.index(view) + 1}_{view:03d}"


# --------------------------------------------------------------------------------------- randomness
def _rng(cfg: SyntheticConfig, *key: Any) -> np.random.Generator:
    digest = hashlib.blake2b(repr((cfg.seed, *key)).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def identity_parameters(cfg: SyntheticConfig, subject: int) -> dict[str, float]:
    """Latent body shape of one identity (metres and ratios); ranges overlap so no single number separates ids."""
    r = _rng(cfg, "body", subject)
    height = r.uniform(1.50, 1.95)
    return {
        "height": height,
        "leg": r.uniform(0.45, 0.53),  # leg length / height
        "thigh": r.uniform(0.47, 0.55),  # thigh / leg
        "torso": r.uniform(0.28, 0.34),  # shoulder-to-hip / height
        "shoulder": r.uniform(0.20, 0.27),  # shoulder width / height
        "hip": r.uniform(0.13, 0.19),  # hip width / height
        "head": r.uniform(0.055, 0.072),  # head radius / height
        "arm": r.uniform(0.36, 0.42),  # arm length / height
        "build": r.uniform(0.8, 1.3),  # limb thickness factor
        "neck": r.uniform(0.03, 0.05),
    }


def gait_parameters(cfg: SyntheticConfig, subject: int) -> dict[str, float]:
    """Latent walking style of one identity."""
    r = _rng(cfg, "gait", subject)
    return {
        "cadence": r.uniform(
            0.16, 0.26
        ),  # gait-cycle phase advance per frame (rad / 2pi ~ 25-40 frames/cycle)
        "hip_swing": r.uniform(0.30, 0.55),  # rad
        "knee_flex": r.uniform(0.50, 1.10),  # rad, during swing
        "arm_swing": r.uniform(0.15, 0.65),  # rad
        "elbow": r.uniform(0.10, 0.55),  # rad, constant bend
        "sway": r.uniform(0.00, 0.035),  # lateral torso sway, fraction of height
        "bob": r.uniform(0.005, 0.025),  # vertical bounce, fraction of height
        "lean": r.uniform(-0.06, 0.12),  # forward torso lean, rad
        "asym": r.uniform(-0.2, 0.2),  # left/right swing asymmetry
    }


def _outfit(cfg: SyntheticConfig, subject: int, part: str, state: int) -> dict[str, Any]:
    # State 0 is the person's own outfit; states 1-3 are other outfits (CCPG's cloth changes).
    r = _rng(cfg, "outfit", subject, part, state)
    colour = r.integers(20, 236, 3)
    second = np.clip(colour.astype(int) + r.integers(-90, 90, 3), 0, 255)
    return {
        "colour": colour.astype(np.uint8),
        "second": second.astype(np.uint8),
        "texture": int(r.integers(0, 4)),  # plain, horizontal stripes, vertical stripes, checks
        "period": int(r.integers(4, 12)),
        "long": bool(r.random() < 0.6),  # long sleeves / long trousers
    }


# --------------------------------------------------------------------------------------- specs
def _ids(cfg: SyntheticConfig, split: str) -> range:
    if split == "train":
        return range(cfg.num_train_ids)
    if split == "test":
        return range(cfg.num_train_ids, cfg.num_train_ids + cfg.num_test_ids)
    raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def list_sequences(cfg: SyntheticConfig, split: str) -> list[tuple[int, str, int, int]]:
    """Cheap picklable specs (subject, type, view azimuth, repeat) of one split; test ids follow train ids."""
    return [
        (subject, seq_type, view, k)
        for subject in _ids(cfg, split)
        for seq_type in cfg.types
        for view in cfg.views
        for k in range(cfg.seqs_per_type)
    ]


# --------------------------------------------------------------------------------------- geometry
def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a 2-d vector in the sagittal plane (x forward, y up) by `angle` (positive = forward)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([v[0] * c + v[1] * s, -v[0] * s + v[1] * c])


def _skeleton(body: dict[str, float], gait: dict[str, float], phase: float) -> dict[str, np.ndarray]:
    """3-d joints (x forward, y up, z left) at one gait phase, walking in place."""
    h = body["height"]
    leg, torso_len = body["leg"] * h, body["torso"] * h
    thigh, shin = leg * body["thigh"], leg * (1 - body["thigh"])
    upper_arm, fore_arm = body["arm"] * h * 0.55, body["arm"] * h * 0.45
    pelvis = np.array([0.0, leg + gait["bob"] * h * math.cos(2 * phase), gait["sway"] * h * math.sin(phase)])
    joints = {"pelvis": pelvis}
    neck = pelvis + np.array([torso_len * math.sin(gait["lean"]), torso_len * math.cos(gait["lean"]), 0.0])
    joints["neck"] = neck
    joints["head"] = neck + np.array([0.0, body["neck"] * h + body["head"] * h, 0.0])
    for side, sign, offset in (("l", 1.0, 0.0), ("r", -1.0, math.pi)):
        amp = 1 + sign * gait["asym"] * 0.5
        swing = gait["hip_swing"] * amp * math.sin(phase + offset)
        knee_bend = gait["knee_flex"] * max(0.0, math.sin(phase + offset - 0.9)) ** 1.5 + 0.08
        hip = pelvis + np.array([0.0, 0.0, sign * body["hip"] * h / 2])
        knee2 = _rot(np.array([0.0, -thigh]), swing)
        ankle2 = knee2 + _rot(np.array([0.0, -shin]), swing - knee_bend)
        joints[f"hip_{side}"] = hip
        joints[f"knee_{side}"] = hip + np.array([knee2[0], knee2[1], 0.0])
        joints[f"ankle_{side}"] = hip + np.array([ankle2[0], ankle2[1], 0.0])
        joints[f"toe_{side}"] = joints[f"ankle_{side}"] + np.array([0.12 * leg * 0.5 + 0.04, -0.02, 0.0])
        arm = -gait["arm_swing"] * amp * math.sin(phase + offset)
        shoulder = neck + np.array([0.0, -0.02 * h, sign * body["shoulder"] * h / 2])
        elbow2 = _rot(np.array([0.0, -upper_arm]), arm)
        wrist2 = elbow2 + _rot(np.array([0.0, -fore_arm]), arm + gait["elbow"])
        joints[f"shoulder_{side}"] = shoulder
        joints[f"elbow_{side}"] = shoulder + np.array([elbow2[0], elbow2[1], 0.0])
        joints[f"wrist_{side}"] = shoulder + np.array([wrist2[0], wrist2[1], 0.0])
    return joints


# (joint a, joint b, label of the upper-garment/skin decision, radius factor)
_LIMBS = [
    ("hip_{s}", "knee_{s}", "thigh", 0.055),
    ("knee_{s}", "ankle_{s}", "shin", 0.045),
    ("ankle_{s}", "toe_{s}", "foot", 0.03),
    ("shoulder_{s}", "elbow_{s}", "upper_arm", 0.04),
    ("elbow_{s}", "wrist_{s}", "fore_arm", 0.033),
]


def _background(r: np.random.Generator, size: int) -> np.ndarray:
    """A square [size, size, 3] background: a gradient plus random clutter (boxes, discs, lines)."""
    yy = np.mgrid[0:size, 0:size][0]
    base = r.integers(30, 220, 3)
    grad = r.uniform(-60, 60, 3)
    bg = np.clip(base + grad * (yy / size)[..., None] + r.normal(0, 6, (size, size, 3)), 0, 255).astype(
        np.uint8
    )
    for _ in range(int(r.integers(6, 16))):
        colour = tuple(int(c) for c in r.integers(0, 256, 3))
        kind = r.integers(0, 3)
        p = r.integers(0, size, 2)
        if kind == 0:
            q = p + r.integers(8, size // 2, 2)
            cv2.rectangle(bg, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, -1)
        elif kind == 1:
            cv2.circle(bg, (int(p[0]), int(p[1])), int(r.integers(4, size // 5)), colour, -1)
        else:
            q = r.integers(0, size, 2)
            cv2.line(bg, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(r.integers(1, 5)))
    return bg


def _textures(cfg: SyntheticConfig, spec: tuple[int, str, int, int], size: int) -> np.ndarray:
    """Per-label colour images [7, size, size, 3] for this sequence: background, skin, hair, outfits, bag."""
    subject, seq_type, _, _ = spec
    upper_state, lower_state = int(seq_type[1]), int(seq_type[4])
    r = _rng(cfg, "scene", spec)
    yy, xx = np.mgrid[0:size, 0:size]
    tex = np.zeros((7, size, size, 3), np.uint8)
    tex[0] = _background(r, size)
    ident = _rng(cfg, "skin", subject)
    tex[_SKIN] = np.array(
        [ident.uniform(150, 240), ident.uniform(100, 190), ident.uniform(70, 150)], np.uint8
    )
    tex[_HAIR] = ident.integers(10, 120, 3).astype(np.uint8)
    for label, outfit in (
        (_UPPER, _outfit(cfg, subject, "U", upper_state)),
        (_LOWER, _outfit(cfg, subject, "D", lower_state)),
    ):
        period, kind = outfit["period"], outfit["texture"]
        pattern = {
            0: np.zeros((size, size), bool),
            1: (yy // period) % 2 == 0,
            2: (xx // period) % 2 == 0,
            3: ((yy // period) + (xx // period)) % 2 == 0,
        }[kind]
        tex[label] = np.where(pattern[..., None], outfit["second"], outfit["colour"])
    tex[_SHOE] = _rng(cfg, "shoe", subject).integers(0, 80, 3).astype(np.uint8)
    tex[_BAG] = r.integers(0, 256, 3).astype(np.uint8)
    return tex


def _walker_frames(
    spec: tuple[int, str, int, int], cfg: SyntheticConfig, *, background: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]]:
    """Per frame of one sequence: the RGB canvas [S, S, 3], the body mask [S, S] (bool, person and bag) and the
    person-crop box (y0, y1, x0, x1) with this sequence's slack, i.e. what a detector and tracker would crop."""
    subject, seq_type, view, _ = spec
    r = _rng(cfg, "sequence", spec)
    jitter = {
        k: v * (1 + r.normal(0, cfg.shape_jitter)) for k, v in identity_parameters(cfg, subject).items()
    }
    gait = {k: v * (1 + r.normal(0, cfg.shape_jitter)) for k, v in gait_parameters(cfg, subject).items()}
    size = cfg.canvas
    tex = _textures(cfg, spec if background is None else (subject, seq_type, view, -1 - background), size)
    if background is not None:  # keep the person's own textures, take another scene's background only
        own = _textures(cfg, spec, size)
        own[0] = tex[0]
        tex = own
    light = r.uniform(0.7, 1.25) * r.uniform(0.9, 1.1, 3)
    upper, lower = _outfit(cfg, subject, "U", int(seq_type[1])), _outfit(cfg, subject, "D", int(seq_type[4]))
    has_bag = seq_type.endswith("_BG")
    bag_side = 1.0 if r.random() < 0.5 else -1.0
    length = int(r.integers(cfg.length[0], cfg.length[1] + 1))
    phase0 = r.uniform(0, 2 * math.pi)
    scale = size * 0.80 / jitter["height"] * r.uniform(0.92, 1.0)  # px per metre
    az = math.radians(view) + r.normal(0, 0.03)
    margin = r.uniform(0.02, 0.12, 4)  # bounding-box slack (left, right, top, bottom): position jitter
    thick = jitter["build"] * jitter["height"]

    rows = np.arange(size)[:, None]
    cols = np.arange(size)[None, :]
    project = _orthographic_camera(az, scale, size)  # one camera for the whole sequence
    for t in range(length):
        joints = _skeleton(jitter, gait, phase0 + gait["cadence"] * t)
        parts = _body_parts(
            joints, project, jitter=jitter, thick=thick, scale=scale, upper=upper, lower=lower
        )
        if has_bag:
            parts.append(_bag_part(joints, project, jitter=jitter, scale=scale, bag_side=bag_side))
        labels = _draw_parts(parts, size)
        rgb = tex[labels, rows, cols]
        rgb = np.clip(rgb.astype(np.float32) * light, 0, 255).astype(np.uint8)
        body = labels > 0
        yield rgb, body, _crop_box(body, margin, size)


def render_sequence(
    spec: tuple[int, str, int, int], cfg: SyntheticConfig | None = None, *, background: int | None = None
) -> SequenceRecord:
    """Render one sequence: RGB crops, ground-truth silhouettes (body and bag) and crop ratios (w/h).

    `background` replaces the scene's background with another seed (tests: only background pixels change).
    """
    cfg = cfg or SyntheticConfig()
    subject, seq_type, view, _ = spec
    if view not in cfg.views or seq_type not in cfg.types:
        raise ConfigError(
            f"spec {spec} does not belong to this SyntheticConfig (views {cfg.views}, types {cfg.types})"
        )
    frames, sils, ratios = [], [], []
    for rgb, body, (y0, y1, x0, x1) in _walker_frames(spec, cfg, background=background):
        ratios.append((x1 - x0) / (y1 - y0))
        frames.append(pad_and_resize(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cfg.frame_size))
        sils.append(
            pad_and_resize(np.ascontiguousarray(body[y0:y1, x0:x1].astype(np.uint8) * 255), cfg.frame_size)
        )
    return SequenceRecord(
        f"{subject:03d}",
        seq_type,
        cfg.view_name(view),
        np.stack(frames),
        np.asarray(ratios, np.float32),
        np.stack(sils),
    )


def background_crop(cfg: SyntheticConfig, *, seed: int) -> tuple[np.ndarray, float]:
    """A person-crop-shaped crop of a scene background with no walker in it (what a detector's false positive
    gives): the frame [H, W, 3] at `cfg.frame_size` and its crop ratio w/h (label-free pretraining data)."""
    r = _rng(cfg, "empty", seed)
    size = cfg.canvas
    bg = _background(r, size)
    h = int(r.integers(size // 2, size + 1))
    w = int(np.clip(h * r.uniform(0.3, 0.6), 4, size))
    y0, x0 = int(r.integers(0, size - h + 1)), int(r.integers(0, size - w + 1))
    light = r.uniform(0.7, 1.25) * r.uniform(0.9, 1.1, 3)
    crop = np.clip(bg[y0 : y0 + h, x0 : x0 + w].astype(np.float32) * light, 0, 255).astype(np.uint8)
    return pad_and_resize(np.ascontiguousarray(crop), cfg.frame_size), w / h


# --------------------------------------------------------------------------------------- raw footage
def write_raw_crops(
    out: str | Path,
    cfg: SyntheticConfig | None = None,
    *,
    split: str = "test",
    specs: Sequence[tuple[int, str, int, int]] | None = None,
) -> list[Path]:
    """The walkers of `split` (or of `specs`) as a raw CCPG tree `<out>/<id>/<type>/<view>/<frame>.png`.

    The PNGs are the person crops *before* pad-and-resize (what a detector and tracker would produce), so the
    CCPG converter (`python -m biggait.data_prep ccpg`) turns the tree into the frames and ratios of
    `render_sequence` (exactly, at frame_size 256x128, the converter's size). Returns the sequence folders.
    """
    cfg = cfg or SyntheticConfig()
    if cfg.seqs_per_type != 1:
        raise ConfigError(
            "the CCPG layout holds one sequence per id/type/view: use seqs_per_type=1 for raw crops"
        )
    folders = []
    for spec in list_sequences(cfg, split) if specs is None else specs:
        subject, seq_type, view, _ = spec
        folder = Path(out) / f"{subject:03d}" / seq_type / cfg.view_name(view)
        for t, (rgb, _, (y0, y1, x0, x1)) in enumerate(_walker_frames(spec, cfg)):
            ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1]))  # RGB -> BGR file
            if not ok:
                raise OSError(f"cannot encode frame {t} of {folder} as PNG")
            atomic_write_bytes(folder / f"{t:04d}.png", png.tobytes())
        folders.append(folder)
    return folders


@dataclass
class Scene:
    """A wide synthetic video with several walkers and its tracks (`render_scene`)."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    tracks: list[
        tuple[int, int, int, int, int, int]
    ]  # (frame, id, x, y, w, h): 1-based frame, 0-based pixels
    labels: np.ndarray  # int32 [T, H, W]: the track id of the walker seen at each pixel, 0 = background
    walkers: dict[
        int, tuple[int, str, int, int]
    ]  # track id -> the walker's spec (subject, type, view, repeat)

    def tracks_text(self) -> str:
        """MOTChallenge lines `frame,id,x,y,w,h,conf,-1,-1,-1`."""
        return "".join(f"{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for f, i, x, y, w, h in self.tracks)


@dataclass(frozen=True)
class _Walk:
    """One walker of a scene: its sequence spec, first frame, speed (px per frame) and ground line (row)."""

    spec: tuple[int, str, int, int]
    start: int
    speed: float
    ground: int


def _scene_view(
    cfg: SyntheticConfig, *, walkers: int, length: int, size: tuple[int, int], seq_type: str, view: int | None
) -> int:
    """The scene's view (90, the side view, by default when the config has it), after checking every option."""
    ids = list(_ids(cfg, "test"))
    if not 1 <= walkers <= len(ids):
        raise ConfigError(f"walkers must be between 1 and the {len(ids)} test identities, got {walkers}")
    if seq_type not in cfg.types:
        raise ConfigError(f"seq_type {seq_type!r} is not one of {cfg.types}")
    view = view if view is not None else (90 if 90 in cfg.views else cfg.views[0])
    if view not in cfg.views:
        raise ConfigError(f"view {view} is not one of {cfg.views}")
    if min(size) < cfg.canvas or length < 2:
        raise ConfigError(f"scene size {size} must be at least the {cfg.canvas}px canvas and length >= 2")
    return view


def _scene_walks(
    cfg: SyntheticConfig, *, walkers: int, length: int, height: int, seq_type: str, view: int, seed: int
) -> list[_Walk]:
    """The first `walkers` test identities, entering one after another, later ones nearer the camera."""
    gap = length // (walkers + 1)
    walks = []
    for i, subject in enumerate(list(_ids(cfg, "test"))[:walkers]):
        body, gait = identity_parameters(cfg, subject), gait_parameters(cfg, subject)
        # stride: two steps per gait cycle, each ~2 * leg * sin(hip swing); cadence is rad per frame
        metres = (
            4 * body["leg"] * body["height"] * math.sin(gait["hip_swing"]) * gait["cadence"] / (2 * math.pi)
        )
        walks.append(
            _Walk(
                spec=(subject, seq_type, view, cfg.seqs_per_type + seed),
                start=i * gap,
                speed=metres * cfg.canvas * 0.77 / body["height"] * math.sin(math.radians(view)),
                ground=height - 12 - 10 * (walkers - 1 - i),  # drawn on top of the earlier ones
            )
        )
    return walks


def _paint_walk(
    walk: _Walk, cfg: SyntheticConfig, frames: np.ndarray, labels: np.ndarray
) -> list[tuple[int, ...]]:
    """Draw one walker into the scene's frames and label maps (in place); returns its track rows."""
    length, height, width = labels.shape
    subject, canvas = walk.spec[0], cfg.canvas
    walker_cfg = replace(cfg, length=(length - walk.start, length - walk.start))
    oy = walk.ground - round(canvas * 0.92)
    tracks = []
    for k, (rgb, body, _) in enumerate(_walker_frames(walk.spec, walker_cfg)):
        t = walk.start + k
        ox = round(walk.speed * k) - canvas // 2
        ys, xs = np.nonzero(body)
        ys, xs = ys + oy, xs + ox
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        frames[t, ys[inside], xs[inside]] = rgb[body][inside]
        labels[t, ys[inside], xs[inside]] = subject
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        my, mx = max(2, round(0.05 * (y1 - y0))), max(2, round(0.05 * (x1 - x0)))
        y0, y1, x0, x1 = y0 - my, y1 + my, x0 - mx, x1 + mx
        if y0 >= 0 and x0 >= 0 and y1 <= height and x1 <= width:  # the whole walker and its slack in view
            tracks.append((t + 1, subject, int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return tracks


def render_scene(
    cfg: SyntheticConfig | None = None,
    *,
    walkers: int = 3,
    length: int = 96,
    size: tuple[int, int] = (256, 512),
    seq_type: str = "U0_D0",
    view: int | None = None,
    seed: int = 0,
) -> Scene:
    """Render `walkers` test-split identities crossing a wide scene from left to right, entering one after another.

    Track id = the walker's subject number. Each walker is a new sequence of its identity (repeat index
    `cfg.seqs_per_type + seed`, never one of the dataset's); `view` defaults to 90 (side view) when the config
    has it. A track row is written for every frame in which the walker's whole body is inside the frame; its box
    is the body's bounding box plus a slack of 5 % (at least 2 px), clipped to the frame.
    """
    cfg = cfg or SyntheticConfig()
    view = _scene_view(cfg, walkers=walkers, length=length, size=size, seq_type=seq_type, view=view)
    height, width = size
    r = _rng(cfg, "scene-video", seed, walkers, size)
    frames = np.repeat(_background(r, max(height, width))[None, :height, :width], length, axis=0)
    labels = np.zeros((length, height, width), np.int32)
    walks = _scene_walks(
        cfg, walkers=walkers, length=length, height=height, seq_type=seq_type, view=view, seed=seed
    )
    tracks = sorted(row for walk in walks for row in _paint_walk(walk, cfg, frames, labels))
    return Scene(frames, tracks, labels, {walk.spec[0]: walk.spec for walk in walks})


_VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}  # FFV1 is lossless


def write_scene_video(
    video: str | Path,
    tracks: str | Path | None = None,
    *,
    fps: float = 25.0,
    scene: Scene | None = None,
    **options: Any,
) -> Scene:
    """Write `render_scene(**options)` (or `scene`) as a video (.mp4 mp4v, .avi MJPG, .mkv lossless FFV1) and its
    MOTChallenge tracks file (default: the video path with suffix .txt), both atomically."""
    video = Path(video)
    codec = _VIDEO_CODECS.get(video.suffix.lower())
    if codec is None:
        raise ConfigError(f"{video}: choose a video suffix among {sorted(_VIDEO_CODECS)}")
    scene = scene if scene is not None else render_scene(**options)
    tracks = Path(tracks) if tracks is not None else video.with_suffix(".txt")
    video.parent.mkdir(parents=True, exist_ok=True)
    tmp = video.with_name(f".{video.stem}.tmp{video.suffix}")
    height, width = scene.frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    try:
        if not writer.isOpened():
            raise ConfigError(f"OpenCV cannot write {video.suffix} video ({codec}) to {video.parent}")
        for frame in scene.frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
        os.replace(tmp, video)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)
    atomic_write_bytes(tracks, scene.tracks_text().encode())
    return scene


def _orthographic_camera(
    az: float, scale: float, size: int
) -> Callable[[np.ndarray], tuple[tuple[int, int], float]]:
    """Camera rotated about the vertical axis: a 3-D point -> (screen pixel, depth; larger = nearer)."""

    def project(p: np.ndarray) -> tuple[tuple[int, int], float]:
        u = p[0] * math.sin(az) - p[2] * math.cos(az)
        d = p[0] * math.cos(az) + p[2] * math.sin(az)
        return (int(round(size / 2 + u * scale)), int(round(size * 0.92 - p[1] * scale))), d

    return project


def _body_parts(
    joints: dict[str, np.ndarray],
    project: Callable[[np.ndarray], tuple[tuple[int, int], float]],
    *,
    jitter: dict[str, float],
    thick: float,
    scale: float,
    upper: dict[str, Any],
    lower: dict[str, Any],
) -> list[tuple[float, Any]]:
    """The drawable shapes of one pose, each with its depth: limbs, torso, hips, neck, head."""
    parts: list[tuple[float, Any]] = []
    for side in ("l", "r"):
        for a, b, kind, radius in _LIMBS:
            (pa, da), (pb, db) = project(joints[a.format(s=side)]), project(joints[b.format(s=side)])
            if kind in ("thigh",) or (kind == "shin" and lower["long"]):
                label = _LOWER
            elif kind == "upper_arm" or (kind == "fore_arm" and upper["long"]):
                label = _UPPER
            elif kind == "foot":
                label = _SHOE
            else:
                label = _SKIN
            width = max(2, int(round(2 * radius * thick * scale / 1.2)))
            parts.append(((da + db) / 2, ("line", pa, pb, width, label)))
    # torso as a filled quad (shoulders to hips), head as a disc, neck as skin
    quad = [project(joints[k])[0] for k in ("shoulder_l", "shoulder_r", "hip_r", "hip_l")]
    parts.append((0.0, ("poly", quad, _UPPER)))
    # the chest/belly depth, so the torso has a body in side views too
    chest = max(3, int(round(0.14 * thick * scale)))
    parts.append((0.0005, ("line", project(joints["pelvis"])[0], project(joints["neck"])[0], chest, _UPPER)))
    hips = [project(joints[k])[0] for k in ("hip_l", "hip_r")]
    parts.append((0.0004, ("line", hips[0], hips[1], max(3, int(round(0.09 * thick * scale))), _LOWER)))
    parts.append((0.001, ("line", project(joints["neck"])[0], project(joints["head"])[0],
                          max(2, int(0.05 * thick * scale)), _SKIN)))  # fmt: skip
    head, _ = project(joints["head"])
    parts.append(
        (0.002, ("circle", head, max(2, int(round(jitter["head"] * jitter["height"] * scale))), _HAIR))
    )
    return parts


def _bag_part(
    joints: dict[str, np.ndarray],
    project: Callable[[np.ndarray], tuple[tuple[int, int], float]],
    *,
    jitter: dict[str, float],
    scale: float,
    bag_side: float,
) -> tuple[float, Any]:
    """A bag on one hip, with its depth."""
    hip = joints["hip_l"] if bag_side > 0 else joints["hip_r"]
    centre = hip + np.array([-0.05, 0.05 * jitter["height"], bag_side * 0.12])
    (cu, cv), cd = project(centre)
    half_w, half_h = int(0.10 * scale), int(0.09 * scale)
    return (cd, ("rect", (cu - half_w, cv - half_h), (cu + half_w, cv + half_h), _BAG))


def _draw_parts(parts: list[tuple[float, Any]], size: int) -> np.ndarray:
    """Label map [size, size] of the parts, drawn far to near (painter's algorithm)."""
    labels = np.zeros((size, size), np.uint8)
    for _, shape in sorted(parts, key=lambda item: item[0]):
        if shape[0] == "line":
            cv2.line(labels, shape[1], shape[2], int(shape[4]), shape[3])
        elif shape[0] == "poly":
            cv2.fillConvexPoly(labels, np.array(shape[1], np.int32), int(shape[2]))
        elif shape[0] == "circle":
            cv2.circle(labels, shape[1], shape[2], int(shape[3]), -1)
        else:
            cv2.rectangle(labels, shape[1], shape[2], int(shape[3]), -1)
    return labels


def _crop_box(body: np.ndarray, margin: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """The body's bounding box widened by the per-sequence slack (left, right, top, bottom), in the canvas."""
    ys, xs = np.nonzero(body)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    y0 = max(0, int(y0 - margin[2] * bh))
    y1 = min(size, int(y1 + margin[3] * bh))
    x0 = max(0, int(x0 - margin[0] * bw))
    x1 = min(size, int(x1 + margin[1] * bw))
    return y0, y1, x0, x1


class _Loader:
    """Picklable `load(spec)` for the shard writer's worker processes."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg

    def __call__(self, spec: tuple[int, str, int, int]) -> SequenceRecord:
        return render_sequence(spec, self.cfg)


def prepare(
    out: str | Path,
    cfg: SyntheticConfig | None = None,
    *,
    workers: int = 2,
    shard_size: int = 32,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Write `<out>/train` (globally shuffled) and `<out>/test` (in order); complete shards are kept on re-runs."""
    cfg = cfg or SyntheticConfig()
    manifests = {}
    for split in ("train", "test"):
        manifests[split] = write_shards(
            list_sequences(cfg, split),
            _Loader(cfg),
            out,
            dataset="synthetic",
            split=split,
            shard_size=shard_size,
            shuffle_seed=cfg.seed if split == "train" else None,
            workers=workers,
            frame_size=cfg.frame_size,
            progress=progress,
        )
    return manifests


def _parser() -> argparse.ArgumentParser:
    """The command line of `python -m biggait.data_prep synthetic`."""
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(prog="python -m biggait.data_prep synthetic", description=__doc__)
    p.add_argument("--out", help="output directory (train/ and test/ shards)")
    p.add_argument("--raw", help="unused: the synthetic world needs no raw data")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--train-ids", type=int, default=defaults.num_train_ids)
    p.add_argument("--test-ids", type=int, default=defaults.num_test_ids)
    p.add_argument("--views", type=int, nargs="+", default=list(defaults.views))
    p.add_argument("--seqs-per-type", type=int, default=defaults.seqs_per_type)
    p.add_argument("--frame-size", type=int, nargs=2, default=list(defaults.frame_size), metavar=("H", "W"))
    p.add_argument("--length", type=int, nargs=2, default=list(defaults.length), metavar=("MIN", "MAX"))
    raw = p.add_argument_group("raw footage (data_prep/README.md, 'Raw footage')")
    raw.add_argument(
        "--raw-crops",
        metavar="DIR",
        help="also write the walkers as a raw CCPG tree DIR/<id>/<type>/<view>/<frame>.png of person crops "
        "(before pad-and-resize), for `python -m biggait.data_prep ccpg --raw DIR`",
    )
    raw.add_argument(
        "--raw-split", choices=("train", "test"), default="test", help="split written by --raw-crops"
    )
    raw.add_argument(
        "--scene-video",
        metavar="PATH",
        help="also render a wide scene video (.mp4, .avi or lossless .mkv) of test-split walkers, with a "
        "MOTChallenge tracks file (track id = subject number)",
    )
    raw.add_argument("--scene-tracks", metavar="PATH", help="tracks file (default: the video path with .txt)")
    raw.add_argument("--scene-walkers", type=int, default=3, help="walkers in the scene (default 3)")
    raw.add_argument("--scene-frames", type=int, default=96, help="frames of the scene video (default 96)")
    raw.add_argument(
        "--scene-size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"), help="scene frame size"
    )
    return p


def _config(args: argparse.Namespace) -> SyntheticConfig:
    """The world the command line describes; one error line when it asks for nothing or for raw data."""
    if args.raw:
        raise ConfigError("the synthetic dataset is generated: drop RAW= / --raw")
    if not (args.out or args.raw_crops or args.scene_video):
        raise ConfigError(
            "nothing to write: pass --out DIR (shards), --raw-crops DIR and/or --scene-video PATH"
        )
    return SyntheticConfig(
        seed=args.seed,
        num_train_ids=args.train_ids,
        num_test_ids=args.test_ids,
        views=tuple(args.views),
        seqs_per_type=args.seqs_per_type,
        frame_size=tuple(args.frame_size),
        length=tuple(args.length),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m biggait.data_prep synthetic --out DIR [--workers N] [knobs] [--raw-crops DIR] [--scene-video PATH]`."""
    args = _parser().parse_args(argv)
    cfg = _config(args)
    if args.scene_video:
        scene = write_scene_video(
            args.scene_video,
            args.scene_tracks,
            cfg=cfg,
            walkers=args.scene_walkers,
            length=args.scene_frames,
            size=tuple(args.scene_size),
        )
        print(f"scene: {args.scene_video}, {len(scene.tracks)} boxes of tracks {sorted(scene.walkers)}")
    if args.raw_crops:
        folders = write_raw_crops(args.raw_crops, cfg, split=args.raw_split)
        print(f"raw crops: {len(folders)} sequences under {args.raw_crops}")
    if args.out:
        manifests = prepare(args.out, cfg, workers=args.workers, shard_size=args.shard_size)
        for split, manifest in manifests.items():
            print(
                f"{split}: {manifest.get('n_sequences', '?')} sequences in {len(manifest['shards'])} shards"
            )
    return 0
