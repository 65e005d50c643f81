"""Frame / silhouette encoding benchmark: size and decode throughput of PNG, JPEG and lossless WebP.

Frames are walkers of the synthetic world (textured clothes, cluttered background, black padding) at the stored
CCPG size 256x128, so the numbers are indicative, not a substitute for a run on real crops.
Run: ``python bench/bench_image_formats.py [--frames 300] [--height 256 --width 128]``.
"""

from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
from PIL import Image


def person_frames(n: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` frames of one walker of the synthetic world (`biggait.data_prep.synthetic`: textured clothes, a
    cluttered background, pad-and-resized to `height` x `width` like a CCPG crop) and its 0/255 silhouettes."""
    from biggait.data_prep.synthetic import SyntheticConfig, render_sequence

    cfg = SyntheticConfig(seed=seed, frame_size=(height, width), length=(max(n, 2), max(n, 2)))
    record = render_sequence((0, "U0_D0", 90, 0), cfg)
    return record.frames[:n], record.silhouettes[:n]


def encoders() -> dict[str, callable]:
    def cv2_enc(ext: str, params: list[int]):
        return lambda img: cv2.imencode(ext, img[..., ::-1] if img.ndim == 3 else img, params)[1].tobytes()

    return {
        "png (cv2, level 1)": cv2_enc(".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        "png (cv2, level 3)": cv2_enc(".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]),
        "jpeg q95 (cv2)": cv2_enc(".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
        "webp lossless (cv2)": cv2_enc(".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    }


def decode_cv2(buf: bytes, colour: bool) -> np.ndarray:
    flag = cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), flag)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if colour else img


def decode_pil(buf: bytes, colour: bool) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(buf)).convert("RGB" if colour else "L"))


def bench(images: np.ndarray, colour: bool) -> None:
    cv2.setNumThreads(1)
    raw = images[0].nbytes
    print(f"{'format':<22}{'decoder':<8}{'KB/img':>8}{'ratio':>7}{'enc/s':>8}{'dec/s':>8}{'PSNR dB':>9}")
    for name, enc in encoders().items():
        t0 = time.perf_counter()
        bufs = [enc(img) for img in images]
        enc_rate = len(bufs) / (time.perf_counter() - t0)
        kb = np.mean([len(b) for b in bufs]) / 1024
        for dec_name, dec in (("cv2", decode_cv2), ("PIL", decode_pil)):
            dec(bufs[0], colour)
            t0 = time.perf_counter()
            out = [dec(b, colour) for b in bufs]
            rate = len(bufs) / (time.perf_counter() - t0)
            mse = float(np.mean((np.stack(out).astype(np.float64) - images) ** 2))
            psnr = "lossless" if mse == 0 else f"{10 * np.log10(255**2 / mse):.1f}"
            print(
                f"{name:<22}{dec_name:<8}{kb:>8.1f}{raw / 1024 / kb:>7.1f}{enc_rate:>8.0f}{rate:>8.0f}{psnr:>9}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    frames, sils = person_frames(args.frames, args.height, args.width)
    print(f"RGB frames {args.height}x{args.width}, {args.frames} images, single thread")
    bench(frames, colour=True)
    print(f"\nsilhouettes {args.height}x{args.width} (0/255)")
    bench(sils, colour=False)


if __name__ == "__main__":
    main()
