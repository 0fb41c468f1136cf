"""Synthetic chest radiograph phantoms: one image and its masks from a random generator.

THIS IS NOT MEDICAL DATA. The images are drawn from simple geometric anatomy (body outline, lungs,
heart/mediastinum, ribs, clavicles, spine, diaphragm) plus a class "finding" that loosely follows
radiology, one function each (``FINDINGS``):

- ``Lung_Opacity``: multifocal dense consolidation, one large blob and one or two smaller ones,
  at least one in each lung, any zone;
- ``COVID``: bilateral, peripheral, lower-zone ground-glass opacity covering roughly a quarter to
  a half of each lower lung;
- ``Viral Pneumonia``: bilateral perihilar interstitial opacity (haze and radiating streaks);
- ``Effusion`` (only at the external demo site, a class the models never see): fluid at a lung
  base up to a meniscus;
- ``Normal``: no finding.

Every finding is drawn visible at 64-128 px and comes with its lesion mask. Nuisance variation
(patient size, position, rotation, exposure, contrast, noise, blur, an L/R marker and corner
text) is drawn independently of the class. Each image is finally rescaled to a mean and standard
deviation drawn independently of the class (measured outside the finding, so the finding does
not change how the rest of the image looks), so global image statistics do not separate the
classes and a model has to look at the findings. A ``Site`` is how the image is acquired once the
patient is posed; ``EXTERNAL_SITE`` is the external demo site's. ``demo_data.py`` writes datasets of them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

NORMAL = "Normal"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise (size, size) float32, made by upsampling a grid."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2*size, 2*size) white-noise field; random crops of it are each image's quantum
    noise (drawing fresh Gaussian noise per image was the generator's single slowest step)."""
    return np.random.default_rng(20200301).standard_normal((2 * size, 2 * size), dtype=np.float32)


def _add_blob(canvas: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float,
              rng: np.random.Generator, lobes: int = 4) -> None:
    """Max a soft irregular blob in [0, 1] into ``canvas`` in place: a few overlapping filled
    ellipses, blurred. Drawn in a small window around the centre (most of the image stays 0)."""
    h, w = canvas.shape
    pad = int(2.2 * max(rx, ry)) + 2
    x0, y0 = max(0, int(cx) - pad), max(0, int(cy) - pad)
    x1, y1 = min(w, int(cx) + pad), min(h, int(cy) + pad)
    if x1 <= x0 or y1 <= y0:
        return
    m = np.zeros((y1 - y0, x1 - x0), np.float32)
    for _ in range(lobes):
        ox, oy = rng.normal(0, 0.35 * rx), rng.normal(0, 0.35 * ry)
        s = rng.uniform(0.55, 1.0)
        cv2.ellipse(m, (int(cx + ox) - x0, int(cy + oy) - y0),
                    (max(1, int(rx * s)), max(1, int(ry * s))),
                    angle + rng.uniform(-30, 30), 0, 360, 1.0, -1)
    k = max(3, int(0.6 * min(rx, ry)) | 1)
    np.maximum(canvas[y0:y1, x0:x1], cv2.GaussianBlur(m, (k, k), 0), out=canvas[y0:y1, x0:x1])


@dataclass(frozen=True)
class Site:
    """How a site acquires its radiographs: everything after the patient is posed. The findings
    and the anatomy are the same everywhere; a second site differs in what its equipment and
    habits add (the exposure curve, blur, noise, collimation, markers, image size, file type)."""
    name: str
    curve: str = "gamma"                     # "gamma" (power law) or "film" (sigmoid response)
    curve_range: tuple = (0.8, 1.25)         # gamma exponent, or the film curve's slope
    blur: tuple = (0.3, 1.4)                 # Gaussian blur sigma, px at 299
    noise: tuple = (0.005, 0.025)            # quantum noise amplitude
    target_std: tuple = (0.17, 0.23)         # display windowing: target std and mean
    target_mean: tuple = (0.42, 0.55)
    collimation: tuple = (0.0, 0.0)          # dark shutter band per side, fraction of the side
    marker: str = "letter"                   # "letter" (L/R in a corner) or "boxed" (site label)
    size: int = 299
    image_format: str = ".png"               # file type written (masks follow it)


DEMO_SITE = Site("demo")
# The external demo site: a film-like exposure curve, more blur and noise, collimator shutters,
# a boxed site label, larger JPEG images (demo_data.py also gives its class folders other names
# and a class the models never saw, pleural effusion).
EXTERNAL_SITE = Site("external", curve="film", curve_range=(5.0, 7.5), blur=(0.8, 2.0),
              noise=(0.02, 0.04), target_std=(0.19, 0.26), target_mean=(0.36, 0.48),
              collimation=(0.02, 0.07), marker="boxed", size=400, image_format=".jpg")

def _anatomy(rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patient in a canonical frame (upright, centred): ``(image float32, lung mask bool,
    body float32)`` (S, S); soft tissue, lungs with vascular texture, heart, bones."""
    u = S / 299.0  # all geometry below is in 299-px units
    img = np.full((S, S), 0.04, np.float32)  # air around the patient

    # Body outline: torso ellipse + neck + shoulders (soft tissue).
    body = np.zeros((S, S), np.float32)
    cv2.ellipse(body, (S // 2, int(175 * u)), (int(rng.uniform(128, 142) * u), int(170 * u)),
                0, 0, 360, 1.0, -1)
    cv2.rectangle(body, (int(120 * u), 0), (int(179 * u), int(40 * u)), 1.0, -1)
    cv2.ellipse(body, (S // 2, int(45 * u)), (int(145 * u), int(35 * u)), 0, 0, 360, 1.0, -1)

    # Lungs: two ellipses clipped by domed hemidiaphragms (image left = patient's right).
    lungs = np.zeros((S, S), np.float32)
    ly = rng.uniform(128, 138) * u
    for side, cx in ((-1, 96), (1, 203)):
        rx = rng.uniform(44, 50) * u
        ry = rng.uniform(88, 96) * u
        cv2.ellipse(lungs, (int(cx * u), int(ly)), (int(rx), int(ry)), side * -6, 0, 360, 1.0, -1)
    x = np.arange(S, dtype=np.float32)
    dome_r = rng.uniform(212, 222) * u  # the right hemidiaphragm sits a little higher
    dome_l = dome_r + rng.uniform(4, 10) * u
    right = x < S / 2
    dome = np.where(right, dome_r, dome_l) - 0.0025 / u * (x - np.where(right, 96, 203) * u) ** 2
    lungs[np.arange(S, dtype=np.float32)[:, None] > dome[None, :]] = 0  # (S, S) below the domes
    # Heart/mediastinum: a bright shape, central and to the patient's left (image right).
    heart = np.zeros((S, S), np.float32)
    cv2.ellipse(heart, (int(rng.uniform(160, 170) * u), int(rng.uniform(182, 190) * u)),
                (int(rng.uniform(42, 50) * u), int(rng.uniform(38, 44) * u)), -20, 0, 360, 1.0, -1)
    cv2.rectangle(heart, (int(135 * u), int(50 * u)), (int(165 * u), int(180 * u)), 1.0, -1)
    lungs[heart > 0] = 0
    lung_mask = lungs > 0
    # Soft tissue, aerated lung with vascular texture, heart: one density map, blurred once.
    anatomy = 0.50 * body + 0.10 * heart - lungs * (0.33 - 0.03 * _smooth_noise(rng, S, 24))
    img += cv2.GaussianBlur(anatomy, (0, 0), 2.5 * u)

    # Bones: spine, ribs (posterior arcs), clavicles.
    bones = np.zeros((S, S), np.float32)
    cv2.rectangle(bones, (int(141 * u), 0), (int(158 * u), S), 0.5, -1)
    for k in range(9):
        y0 = (62 + 19 * k) * u
        for side in (-1, 1):
            cv2.ellipse(bones, (int(S / 2 + side * 8 * u), int(y0)), (int(88 * u), int(26 * u)), 0,
                        (0, 90)[side == -1] + 10, (90, 180)[side == -1] - 10 + 0, 0.45,
                        max(1, int(5 * u)))
    for side in (-1, 1):
        cv2.line(bones, (int(S / 2 + side * 12 * u), int(52 * u)),
                 (int(S / 2 + side * 105 * u), int(rng.uniform(34, 44) * u)), 0.6, max(1, int(7 * u)))
    img += 0.16 * cv2.GaussianBlur(bones, (0, 0), 1.2 * u) * body
    return img, lung_mask, body


# The findings: sized and dense enough that a radiologist would call them visible (and a CNN
# trained from scratch at 64-128 px can see them), placed where the disease puts them. Each takes
# the lung mask as float32 (S, S) and returns the finding's density (S, S), before it is clipped
# to the lungs.
def _lung_opacity(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Multifocal dense consolidation: one large lobar/segmental blob and one or two smaller
    ones, at least one in each lung (so "one lung is clear" does not give the class away), any
    zone, nearly as dense as soft tissue."""
    u = S / 299.0
    finding = np.zeros((S, S), np.float32)
    first = rng.choice((96, 203))
    for i in range(rng.integers(2, 4)):
        side = first if i == 0 else (299 - first if i == 1 else rng.choice((96, 203)))
        for _ in range(8):  # redraw a blob that would sit mostly behind the heart
            blob = np.zeros((S, S), np.float32)
            cx = (side + rng.uniform(-20, 20)) * u
            cy = rng.uniform(75, 190) * u
            r = rng.uniform(24, 34) * u if i == 0 else rng.uniform(14, 22) * u
            _add_blob(blob, cx, cy, r, r * rng.uniform(0.8, 1.3), rng.uniform(0, 180), rng)
            if (blob * lm).sum() >= 0.7 * blob.sum():
                break
        np.maximum(finding, blob, out=finding)
    return finding * 0.34


def _covid(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Bilateral, peripheral, lower-zone ground glass: patchy, hazy (vessels and ribs still show
    through), covering roughly a quarter to a half of each lower lung."""
    u = S / 299.0
    finding = np.zeros((S, S), np.float32)
    for cx0 in (96, 203):
        lateral = -1 if cx0 < 150 else 1
        for _ in range(rng.integers(4, 7)):
            cx = (cx0 + lateral * rng.uniform(18, 40)) * u
            cy = rng.uniform(140, 210) * u
            _add_blob(finding, cx, cy, rng.uniform(16, 24) * u, rng.uniform(20, 32) * u, 0, rng)
    return finding * (0.22 * (1 + 0.35 * _smooth_noise(rng, S, 12)))


def _viral_pneumonia(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Bilateral perihilar interstitial opacity: a haze around each hilum with streaks radiating
    outwards (peribronchial cuffing), sparing the periphery."""
    u = S / 299.0
    streaks = np.zeros((S, S), np.float32)
    for hx in (118, 181):
        lateral = -1 if hx < 150 else 1
        hy = rng.uniform(118, 135)
        for _ in range(rng.integers(10, 15)):
            ang = rng.uniform(-70, 70) * np.pi / 180
            ln = rng.uniform(30, 55)
            ex, ey = hx + lateral * ln * np.cos(ang), hy + ln * np.sin(ang)
            cv2.line(streaks, (int(hx * u), int(hy * u)), (int(ex * u), int(ey * u)), 1.0,
                     max(1, int(3 * u)))
        haze = np.zeros((S, S), np.float32)
        _add_blob(haze, (hx + lateral * 20) * u, hy * u, 26 * u, 36 * u, 0, rng)
        streaks += 0.7 * haze
    return 0.26 * cv2.GaussianBlur(np.clip(streaks, 0, 1), (0, 0), 1.5 * u)


def _effusion(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Pleural effusion (a class only the external demo site has): fluid filling the base of one
    lung, or of both, up to a meniscus that climbs towards the lateral chest wall, dense as soft
    tissue, blunting the costophrenic angle."""
    u = S / 299.0
    finding = np.zeros((S, S), np.float32)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    sides = (96, 203) if rng.random() < 0.35 else (rng.choice((96, 203)),)
    for cx in sides:
        lateral = -1 if cx < 150 else 1
        level = rng.uniform(165, 195) * u                       # the fluid level at mid-lung
        rise = rng.uniform(25, 45) * u                          # how far the meniscus climbs
        edge = np.clip(lateral * (x - cx * u) / (50 * u), 0, 1)  # 0 medially, 1 at the wall
        top = level - rise * edge ** 2
        side = (lateral * (x - 150 * u)) > 0
        finding[side] = np.maximum(finding[side], np.clip((y - top) / (6 * u), 0, 1)[side])
    return 0.32 * cv2.GaussianBlur(finding, (0, 0), 2.0 * u)


FINDINGS = {"Lung_Opacity": _lung_opacity, "COVID": _covid, "Viral Pneumonia": _viral_pneumonia,
            "Effusion": _effusion}


def _pose(img: np.ndarray, lung_mask: np.ndarray, lesion: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient size, position and rotation: one random affine for image and masks (uint8 0/255
    masks out)."""
    S = img.shape[0]
    u = S / 299.0
    scale = rng.uniform(0.86, 1.08)
    M = cv2.getRotationMatrix2D((S / 2, S / 2), rng.uniform(-7, 7), scale)
    M[:, 2] += rng.uniform(-14, 14, 2) * u
    warp = lambda a, interp: cv2.warpAffine(a, M, (S, S), flags=interp, borderValue=0)  # noqa: E731
    img = warp(img, cv2.INTER_LINEAR)
    img[img == 0] = 0.04
    return (img, warp(lung_mask.astype(np.uint8) * 255, cv2.INTER_NEAREST),
            warp(lesion.astype(np.uint8) * 255, cv2.INTER_NEAREST))


def _acquire(img: np.ndarray, lesion_out: np.ndarray, rng: np.random.Generator, site: Site
             ) -> np.ndarray:
    """What the site's equipment does to the posed patient: exposure curve, blur, quantum
    noise, windowing to a random mean and spread, collimation, then a marker and text. Returns
    the uint8 image."""
    S = img.shape[0]
    u = S / 299.0
    img = np.clip(img, 0, None)
    k = rng.uniform(*site.curve_range)
    if site.curve == "gamma":
        img = img ** k
    else:  # film: a sigmoid characteristic curve around the image's middle density
        img = 1.0 / (1.0 + np.exp(-k * (img - float(np.median(img)))))
    blur = rng.uniform(*site.blur) * u
    img = cv2.GaussianBlur(img, (0, 0), blur)
    oy, ox = rng.integers(0, S, 2)
    img += rng.uniform(*site.noise) * _noise_bank(S)[oy:oy + S, ox:ox + S]
    # Exposure/windowing drawn independently of the class: rescale to a random target mean/std,
    # measured outside the finding. (Measured over the whole image, a bright finding would darken
    # and flatten everything else, and a model could read the class from the heart's contrast.)
    ref = img[lesion_out == 0]
    img = (img - ref.mean()) / (ref.std() + 1e-6)
    img = img * rng.uniform(*site.target_std) + rng.uniform(*site.target_mean)
    out = np.clip(img * 255, 0, 255).astype(np.uint8)
    if site.collimation[1] > 0:  # collimator shutters: a dark band on each side
        t, b, l, r = (int(round(f * S)) for f in rng.uniform(*site.collimation, 4))
        out[:t], out[S - b:], out[:, :l], out[:, S - r:] = 8, 8, 8, 8
    if site.marker == "letter":
        corners = [(int(8 * u), int(24 * u)), (S - int(26 * u), int(24 * u)),
                   (int(8 * u), S - int(8 * u)), (S - int(26 * u), S - int(8 * u))]
        c = corners[rng.integers(4)]
        cv2.putText(out, str(rng.choice(["L", "R"])), c, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * u, 255,
                    max(1, int(2 * u)), cv2.LINE_AA)
        if rng.random() < 0.4:
            txt = str(rng.choice(["PORTABLE", "AP", "PA", "ERECT", "SUPINE"]))
            cv2.putText(out, txt, (int(S / 2 - 30 * u), int(16 * u)), cv2.FONT_HERSHEY_PLAIN,
                        0.9 * u, 230, 1, cv2.LINE_AA)
    else:  # a boxed site label at the bottom left and a side letter at the top right
        x0, y0 = int(rng.uniform(0.08, 0.14) * S), int(rng.uniform(0.84, 0.9) * S)
        cv2.rectangle(out, (x0 - 4, y0 - int(16 * u)), (x0 + int(70 * u), y0 + 4), 200, 1)
        cv2.putText(out, "SITE-E", (x0, y0), cv2.FONT_HERSHEY_PLAIN, 0.9 * u, 220, 1,
                    cv2.LINE_AA)
        cv2.putText(out, str(rng.choice(["L", "R"])), (S - int(40 * u), int(40 * u)),
                    cv2.FONT_HERSHEY_DUPLEX, 0.8 * u, 240, 1, cv2.LINE_AA)
    return out


def render_phantom(label: str, rng: np.random.Generator, size: int | None = None,
                   site: Site = DEMO_SITE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic radiograph of ``label`` (one of ``CLASSES``, or ``"Effusion"``).

    Returns ``(image, lung_mask, lesion_mask)``: image uint8 (size, size), masks uint8 0/255.
    The patient is drawn in a canonical frame (``_anatomy``), the class's finding added inside
    the lungs (``FINDINGS``), one random affine moves image and masks together (``_pose``), and
    the site's acquisition makes the image (``_acquire``). ``size`` defaults to the site's.
    """
    if label != NORMAL and label not in FINDINGS:
        raise ValueError(f"unknown class {label!r}; valid: {', '.join(sorted([*FINDINGS, NORMAL]))}")
    S = size or site.size
    img, lung_mask, _ = _anatomy(rng, S)
    lm = lung_mask.astype(np.float32)
    finding = FINDINGS[label](rng, S, lm) if label in FINDINGS else np.zeros((S, S), np.float32)
    finding *= lm
    img += finding
    img, lung_out, lesion_out = _pose(img, lung_mask, finding > 0.04, rng)
    return _acquire(img, lesion_out, rng, site), lung_out, lesion_out
