"""The image pipeline against Pillow: the time to make all six artefacts of a 1024x1024 PNG
(thumb, preview, 1200x630 social card, full WebP, AVIF, the original re-encoded; and the blurhash
and quality score), pyvips as shipped and the same work in Pillow at matched settings, in the
same run.

What it measures
    Input: a generated photo-like 1024x1024 sRGB PNG, no metadata (``_support.photo_like_png``:
    Perlin light at seven scales, a tint, hard-edged shapes, grain sigma 2; ~2.5 MB). In this
    process, ``pyvips.cache_set_max(0)``; each case ``--warmup`` times (default 3), then
    ``--runs`` times (default 20), interleaved in a rotating order; medians of wall time and of
    the process's CPU time (all threads).

    (a) pyvips: ``infrastructure.imaging.pipeline.process(data, "png")`` as shipped.
    (b) Pillow, sequential: decode once (``info`` dropped: no ICC/EXIF written), then each
        artefact in turn (the straightforward implementation).
    (c) Pillow with the pipeline's overlap: the three full-size encoders on a 3-thread pool
        (Pillow's encoders release the GIL) while the calling thread makes the small ones.
    (d) Each step alone, both: decode; full WebP; AVIF; PNG; preview and thumb (resize + WebP);
        social card (resize, crop + JPEG); blurhash; quality.

    Matched settings (the pipeline module's constants): the same boxes (libvips
    ``thumbnail_image``, Pillow ``thumbnail`` LANCZOS; the thumb made from the preview); WebP
    quality WEBP_Q, ``method`` = WEBP_EFFORT (the same libwebp); AVIF quality AVIF_Q and Pillow
    ``speed`` = 9 - AVIF_EFFORT with ``autotiling=False``: libvips passes libheif ``speed = 9 -
    effort``, which its aom plugin uses as ``cpu-used``, and libavif uses ``speed`` as ``cpu-
    used``; both then encode with libaom's all-intra mode, tune SSIM, 4:2:0, the same cq-level
    for Q, one thread per core, one tile; the social card (at most 1200x630, never enlarged)
    JPEG at JPEG_Q, optimised, cropped by libvips ``attention`` and by Pillow ``ImageOps.fit``
    at the centre
    (Pillow has no saliency crop: it is spared that work); PNG level PNG_COMPRESSION (libvips
    with PNG_FILTER "all", Pillow's default adaptive filter per row); the same ``blurhash``
    package on a 32 px copy; the same quality formula (``pipeline.QualityParts``; Pillow without
    numpy: a Laplacian by ``ImageFilter.Kernel`` in both signs, ``ImageStat`` and the histogram).
    Outputs compared: dimensions, bytes, PSNR against the source (lossy full-size ones).

    ``--sweep`` (default on): (a), (b), (c) with other encoder settings (pyvips: the module's
    constants overridden in this process only) and libvips ``pngsave`` without row filters.

Command
    .venv/bin/python -m benchmarks.image_pipeline [--runs 20] [--warmup 3] [--no-sweep]

Targets
    (a) <= 0.7 x (b) and (a) <= 150 ms.

Output: tables of medians and ``benchmarks/results/image_pipeline.json``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import blurhash
import pyvips
from PIL import Image, ImageFilter, ImageOps, ImageStat, features

from benchmarks._support import argument_parser, median, photo_like_png, table, write_result
from infrastructure.imaging import pipeline

NAME = "image_pipeline"
SIZE = 1024
TARGET_RATIO, TARGET_MS = 0.7, 150.0
KINDS = pipeline.IMAGE_KINDS
LANCZOS = Image.Resampling.LANCZOS
# an 8-bit filter result clips below 0, so the Laplacian is taken in both signs (at 1/4 scale)
LAPLACIAN = ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], scale=4)
NEGATED = ImageFilter.Kernel((3, 3), [0, -1, 0, -1, 4, -1, 0, -1, 0], scale=4)

Outputs = tuple[dict[str, tuple[int, int, bytes]], str, float]  # artefacts, blurhash, quality


@dataclass(frozen=True, slots=True)
class Encoders:
    label: str
    webp_q: int
    webp_effort: int
    avif_q: int
    avif_effort: int
    png_compression: int

    @property
    def avif_speed(self) -> int:
        """libavif's (Pillow's) ``speed`` with the aom ``cpu-used`` of libvips' ``effort``."""
        return 9 - self.avif_effort


SHIPPED = Encoders(
    "shipped",
    *(pipeline.WEBP_Q, pipeline.WEBP_EFFORT, pipeline.AVIF_Q, pipeline.AVIF_EFFORT),
    pipeline.PNG_COMPRESSION,
)
VARIANTS = (
    replace(SHIPPED, label="AVIF effort 2", avif_effort=2),
    replace(SHIPPED, label="AVIF effort 1", avif_effort=1),
    replace(SHIPPED, label="AVIF 0, WebP 0", avif_effort=0, webp_effort=0),
    replace(
        SHIPPED, label="AVIF 0, WebP 0, PNG 1", avif_effort=0, webp_effort=0, png_compression=1
    ),
)


@contextmanager
def pipeline_settings(enc: Encoders) -> Iterator[None]:
    """The pipeline module's encoder constants set to ``enc`` in this process, then restored."""
    wanted = {k.upper(): v for k, v in asdict(enc).items() if k != "label"}
    saved = {name: getattr(pipeline, name) for name in wanted}
    for name, value in wanted.items():
        setattr(pipeline, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(pipeline, name, value)


# -- pyvips: the shipped module's own functions -----------------------------------------------


def vips_decode(data: bytes) -> pyvips.Image:
    return pipeline.to_srgb(pyvips.Image.new_from_buffer(data, "", access="random")).copy_memory()


def vips_fit(image: pyvips.Image, size: int) -> pyvips.Image:
    return image.thumbnail_image(size, height=size, size="down")  # as the pipeline's _fit


def vips_process(data: bytes) -> Outputs:
    made = pipeline.process(data, "png")
    return (
        {a.kind: (a.width, a.height, a.data) for a in made.artefacts},
        made.blurhash,
        made.quality_score,
    )


# -- Pillow -----------------------------------------------------------------------------------


def pil_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    image.info = {}  # no ICC profile, EXIF or dpi of the source reaches an output
    return image


def pil_fit(image: Image.Image, size: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size), LANCZOS)
    return copy


def pil_encode(image: Image.Image, fmt: str, enc: Encoders) -> bytes:
    out = io.BytesIO()
    if fmt == "webp":
        image.save(out, "WEBP", quality=enc.webp_q, method=enc.webp_effort)
    elif fmt == "jpeg":
        image.save(out, "JPEG", quality=pipeline.JPEG_Q, optimize=True, progressive=True)
    elif fmt == "avif":
        image.save(out, "AVIF", quality=enc.avif_q, speed=enc.avif_speed, autotiling=False)
    else:
        image.save(out, "PNG", compress_level=enc.png_compression)
    return out.getvalue()


def pil_blurhash(thumb: Image.Image) -> str:
    small = pil_fit(thumb, pipeline.BLURHASH_SIZE)
    pixels, (width, height) = small.tobytes(), small.size
    rows = [
        [[pixels[(y * width + x) * 3 + c] for c in range(3)] for x in range(width)]
        for y in range(height)
    ]
    return str(blurhash.encode(rows, components_x=4, components_y=4))  # a square source


def pil_quality(image: Image.Image) -> float:
    grey = image.convert("L")
    if grey.width > 512:
        grey = grey.resize((512, round(grey.height * 512 / grey.width)), LANCZOS)
    inner = (1, 1, grey.width - 1, grey.height - 1)  # Pillow leaves the border unfiltered
    up, down = (ImageStat.Stat(grey.filter(k).crop(inner)) for k in (LAPLACIAN, NEGATED))
    mean = 4 * (up.sum[0] - down.sum[0]) / up.count[0]
    variance = 16 * (up.sum2[0] + down.sum2[0]) / up.count[0] - mean**2
    histogram = grey.histogram()
    total = sum(histogram)
    average = sum(i * count for i, count in enumerate(histogram)) / total
    clipped = (sum(histogram[:3]) + sum(histogram[253:])) / total
    entropy = -sum(c / total * math.log2(c / total) for c in histogram if c)
    return pipeline.QualityParts(
        round(1 - math.exp(-variance / 300), 4),
        round(max(0.0, 1 - abs(average - 118) / 118 - 2 * clipped), 4),
        round(entropy / 8, 4),
    ).score


def pil_social(source: Image.Image) -> tuple[int, int, bytes]:
    size = pipeline.social_size(*source.size)
    card = ImageOps.fit(source, size, LANCZOS)
    out = io.BytesIO()  # baseline, as the pipeline's card
    card.save(out, "JPEG", quality=pipeline.JPEG_Q, optimize=True)
    return (*size, out.getvalue())


def pil_process(data: bytes, enc: Encoders, pool: Executor | None = None) -> Outputs:
    source = pil_decode(data)
    slow = {"full": "webp", "modern": "avif", "original": "png"}
    futures = {k: pool.submit(pil_encode, source, f, enc) for k, f in slow.items()} if pool else {}
    social = pool.submit(pil_social, source) if pool else None
    preview = pil_fit(source, pipeline.SIZES["preview"])
    thumb = pil_fit(preview, pipeline.SIZES["thumb"])
    made = {
        kind: (*im.size, pil_encode(im, "webp", enc))
        for kind, im in [("preview", preview), ("thumb", thumb)]
    }
    hash_, score = pil_blurhash(thumb), pil_quality(preview)
    for kind, fmt in slow.items():
        made[kind] = (
            *source.size,
            futures[kind].result() if pool else pil_encode(source, fmt, enc),
        )
    made["social"] = social.result() if social else pil_social(source)
    return made, hash_, score


# -- measuring --------------------------------------------------------------------------------


def measure(cases: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, dict]:
    """Median wall and CPU ms of each case (runs interleaved, the order rotating); bytes made."""
    for _ in range(warmup):
        for case in cases.values():
            case()
    names = list(cases)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    made: dict[str, Any] = {}
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            cpu_start, start = time.process_time(), time.perf_counter()
            made[name] = cases[name]()
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - cpu_start) * 1000)
    return {
        name: {
            "ms": median(wall[name]),
            "cpu_ms": median(cpu[name]),
            "bytes": len(made[name]) if isinstance(made[name], bytes) else math.nan,
        }
        for name in names
    }


def psnr(encoded: bytes, reference: pyvips.Image) -> float:
    decoded = pyvips.Image.new_from_buffer(encoded, "")[0:3].cast("float")
    mse = ((decoded - reference.cast("float")) ** 2).avg()
    return 10 * math.log10(255**2 / mse) if mse else math.inf


def pipelines(data: bytes, enc: Encoders, pool: Executor, runs: int, warmup: int) -> dict:
    """(a), (b), (c) timed; then one output of (a) and of (b) compared."""
    with pipeline_settings(enc):
        cases = {
            "a": lambda: vips_process(data),
            "b": lambda: pil_process(data, enc),
            "c": lambda: pil_process(data, enc, pool),
        }
        times = measure(cases, runs, warmup)
        made = {"pyvips": cases["a"](), "pillow": cases["b"]()}
    reference = vips_decode(data)
    outputs: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        outputs[kind] = {}
        for lib, (artefacts, _, _) in made.items():
            width, height, out = artefacts[kind]
            lossy = kind in ("full", "modern")
            outputs[kind][f"{lib}_size"] = f"{width}x{height}"
            outputs[kind][f"{lib}_bytes"] = len(out)
            outputs[kind][f"{lib}_psnr"] = psnr(out, reference) if lossy else math.nan
    outputs["blurhash"] = {f"{lib}_size": m[1] for lib, m in made.items()}
    outputs["quality score"] = {f"{lib}_size": str(m[2]) for lib, m in made.items()}
    return {"encoders": asdict(enc), "times": times, "outputs": outputs}


def breakdown(data: bytes, runs: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    """(d): each step alone, pyvips ("v") and Pillow ("p"); libvips PNG without row filters."""
    enc, keep, level = SHIPPED, pyvips.enums.ForeignKeep.NONE, SHIPPED.png_compression
    vs, ps = vips_decode(data), pil_decode(data)
    vp, pp = vips_fit(vs, 512).copy_memory(), pil_fit(ps, 512)
    vt, pt = vips_fit(vp, 256).copy_memory(), pil_fit(pp, 256)
    steps: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {
        "decode (1024 PNG)": (lambda: vips_decode(data), lambda: pil_decode(data)),
        "full WebP": (lambda: pipeline.encode(vs, "webp"), lambda: pil_encode(ps, "webp", enc)),
        "AVIF": (lambda: pipeline.encode(vs, "avif"), lambda: pil_encode(ps, "avif", enc)),
        "original PNG": (lambda: pipeline.encode(vs, "png"), lambda: pil_encode(ps, "png", enc)),
        "preview: resize + WebP": (
            lambda: pipeline.encode(vips_fit(vs, 512).copy_memory(), "webp"),
            lambda: pil_encode(pil_fit(ps, 512), "webp", enc),
        ),
        "thumb: resize + WebP": (
            lambda: pipeline.encode(vips_fit(vp, 256), "webp"),
            lambda: pil_encode(pil_fit(pp, 256), "webp", enc),
        ),
        "social card: resize, crop + JPEG": (
            lambda: pipeline.social_card(vs).data,
            lambda: pil_social(ps)[2],
        ),
        "blurhash (32 px copy)": (lambda: pipeline.blurhash_of(vt), lambda: pil_blurhash(pt)),
        "quality (512 copy)": (lambda: pipeline.quality_of(vp), lambda: pil_quality(pp)),
        f"PNG level {level}, no row filter (not shipped)": (
            lambda: bytes(vs.pngsave_buffer(compression=level, filter="none", keep=keep)),
            None,
        ),
    }
    cases = {f"{lib}|{step}": pair[i] for step, pair in steps.items() for i, lib in enumerate("vp")}
    timed = measure({k: v for k, v in cases.items() if v is not None}, runs, warmup)
    nothing = {"ms": math.nan, "cpu_ms": math.nan, "bytes": math.nan}
    return {step: {lib: timed.get(f"{lib}|{step}", nothing) for lib in "vp"} for step in steps}


def finite(value: Any) -> Any:
    """``value`` with NaN (no such measure) as ``None``: strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def report(result: dict[str, Any]) -> None:
    shipped, steps = result["shipped"], result["steps"]
    times = shipped["times"]
    a, b, c = (times[k]["ms"] for k in "abc")
    config = result["config"]
    print(f"\nmedians of {config['runs']} runs after {config['warmup']} warm-up (CPU: all threads)")
    labels = {
        "a": "(a) pyvips, as shipped",
        "b": "(b) Pillow, sequential",
        "c": "(c) Pillow, 3 threads",
    }
    rows = [[labels[k], t["ms"], t["cpu_ms"], t["ms"] / a] for k, t in times.items()]
    print(table(["case", "ms", "CPU ms", "x (a)"], rows))
    print(f"ratio (a)/(b) {a / b:.3f}; (a)/(c) {a / c:.3f}")

    print("\n(d) each step alone, medians")
    columns = [(lib, key) for key in ("ms", "cpu_ms", "bytes") for lib in "vp"]
    print(
        table(
            ["step", "pyvips ms", "Pillow ms", "pyvips CPU", "Pillow CPU", "pyvips B", "Pillow B"],
            [[step, *(t[lib][key] for lib, key in columns)] for step, t in steps.items()],
        )
    )
    print("\noutputs (PSNR: dB against the decoded source)")
    keys = ("size", "bytes", "psnr")
    print(
        table(
            ["artefact", "pyvips", "Pillow", "pyvips B", "Pillow B", "pyvips PSNR", "Pillow PSNR"],
            [
                [
                    kind,
                    *(
                        row.get(f"{lib}_{k}", math.nan)
                        for k in keys
                        for lib in ("pyvips", "pillow")
                    ),
                ]
                for kind, row in shipped["outputs"].items()
            ],
        )
    )
    print(
        f"\ntarget (a) <= {TARGET_RATIO:g} x (b) and (a) <= {TARGET_MS:g} ms: "
        f"{'MET' if result['target_met'] else 'NOT MET'} ((a) {a:.0f} ms = {a / b:.2f} x (b))"
    )
    if result["sweep"]:
        print("\nother settings (pyvips: the module's constants overridden here; Pillow matched)")
        rows = []
        for s in [shipped, *result["sweep"]]:
            t, o = s["times"], s["outputs"]
            ratios = [t["a"]["ms"] / t["b"]["ms"], t["a"]["ms"] / t["c"]["ms"]]
            out = [o[k][f"pyvips_{m}"] for k in ("modern", "full") for m in ("bytes", "psnr")]
            out.append(o["original"]["pyvips_bytes"])
            rows.append([s["encoders"]["label"], *(t[k]["ms"] for k in "abc"), *ratios, *out])
        headers = ["settings", "(a) ms", "(b) ms", "(c) ms", "a/b", "a/c", "AVIF B", "PSNR"]
        print(table([*headers, "WebP B", "PSNR", "PNG B"], rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each case first")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be positive and --warmup not negative")
    if not (features.check("avif") and features.check("webp") and pipeline.avif_available()):
        raise SystemExit("needs AVIF and WebP in both libvips and Pillow")
    pyvips.cache_set_max(0)
    load = [os.getloadavg()[0]]
    data = photo_like_png(SIZE)
    versions = {
        "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
        "pillow": Image.__version__,
        "libavif": features.version("avif"),
        "libwebp": features.version("webp"),
    }
    print(f"{NAME}: {versions}; {os.cpu_count()} CPUs, load average {load[0]:.2f}")
    print(
        f"source: generated photo-like {SIZE}x{SIZE} sRGB PNG, {len(data):,} bytes; settings "
        f"{asdict(SHIPPED)}, Pillow AVIF speed {SHIPPED.avif_speed}"
    )
    runs, warmup = args.runs, args.warmup
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="pillow") as pool:
        shipped = pipelines(data, SHIPPED, pool, runs, warmup)
        steps = breakdown(data, runs, warmup)
        sweep = [pipelines(data, enc, pool, runs, warmup) for enc in VARIANTS * args.sweep]
    load.append(os.getloadavg()[0])
    a, b = shipped["times"]["a"]["ms"], shipped["times"]["b"]["ms"]
    result = {
        "config": {"runs": runs, "warmup": warmup, "size": SIZE},
        "versions": versions,
        "source_png_bytes": len(data),
        "pillow_avif_speed": SHIPPED.avif_speed,
        "ratio_a_b": a / b,
        "ratio_a_c": a / shipped["times"]["c"]["ms"],
        "target_met": a <= TARGET_RATIO * b and a <= TARGET_MS,
        "shipped": shipped,
        "steps": steps,
        "sweep": sweep,
        "load_average": load,
    }
    report(result)
    print(f"\nload average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    print(f"written {write_result(NAME, finite(result))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
