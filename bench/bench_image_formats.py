"""Frame / silhouette encoding benchmark: size and decode throughput of PNG, JPEG and lossless WebP.

Frames are procedural person-like crops (smooth body blob, textured clothes, black padding) at the stored
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
    """Smooth shaded person blobs with texture and sensor noise, plus their 0/255 silhouettes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.zeros((n, height, width, 3), np.uint8)
    sils = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        cx = width / 2 + 6 * np.sin(i / 5)
        body = ((xx - cx) / (0.22 * width)) ** 2 + ((yy - 0.55 * height) / (0.42 * height)) ** 2 < 1
        head = ((xx - cx) / (0.1 * width)) ** 2 + ((yy - 0.12 * height) / (0.08 * height)) ** 2 < 1
        mask = body | head
        shade = 0.6 + 0.4 * np.cos((xx - cx) / width * np.pi)
        colour = rng.uniform(60, 220, 3).astype(np.float32)
        stripes = 20 * np.sin(yy / 3.0 + i)[..., None]
        img = shade[..., None] * colour + stripes + rng.normal(0, 6, (height, width, 3))
        img = np.clip(img, 0, 255) * mask[..., None]
        frames[i] = img.astype(np.uint8)
        sils[i] = mask.astype(np.uint8) * 255
    return frames, sils


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
