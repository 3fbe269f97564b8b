"""The synthetic concept world: images whose concepts are known exactly, so interpretability
methods can be scored against ground truth instead of eyeballed.

A `ConceptWorld` fixes the vocabulary (shapes, colours, textures, backgrounds) and one concept
signature of 3-5 concepts per class. A `SyntheticConceptDataset` draws scenes of that world:
1-3 objects on a background, the class signature always present, distractors and free
attributes never completing another class's signature, so the class is identifiable from the
image-level concept vector alone. Everything is a pure function of (seed, split, index), so
images are rendered lazily and identically on every run and in every worker.

Randomness uses Python's `random.Random.random()` (whose stream Python guarantees across
versions) for scene parameters and numpy's PCG64 uniforms for the rendering assets.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from retrofit.errors import ConfigError

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "heart",
)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.96, 0.88, 0.12),
    "purple": (0.58, 0.18, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.96, 0.96, 0.96),
    "pink": (1.00, 0.55, 0.78),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS: tuple[str, ...] = (
    "dark background",
    "grass background",
    "sky background",
    "sand background",
    "water background",
)
GROUPS: tuple[str, ...] = ("shape", "colour", "texture", "background")
SPLITS: tuple[str, ...] = ("train", "val", "test")

MIN_CLASSES, MAX_CLASSES = 10, 200
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
MAX_OBJECTS = 3

_GROUP_SIZES = (len(SHAPES), len(COLOURS), len(TEXTURES), len(BACKGROUNDS))
_OFFSETS = tuple(sum(_GROUP_SIZES[:g]) for g in range(4))
_SHAPE, _COLOUR, _TEXTURE, _BACKGROUND = range(4)
# At most this many concepts of each group in a signature (one background per image).
_SIGNATURE_CAPS = (2, 2, 2, 1)
_SCENE_TRIES = 40
_DISTRACTOR_TRIES = 20
_FEASIBILITY_TRIES = 300

# Per-object parameters stored per scene, in this column order.
_OBJ_COLS = ("shape", "colour", "texture", "cx", "cy", "r", "angle", "phase_u", "phase_v",
             "jit_r", "jit_g", "jit_b", "shade")  # fmt: skip
# Per-image parameters: background id, background crop, noise crop, global brightness.
_IMG_COLS = ("background", "bg_x", "bg_y", "noise_x", "noise_y", "brightness")


def _randint(rng: random.Random, n: int) -> int:
    """Uniform integer in [0, n) from `random()` only, whose stream Python keeps stable."""
    return min(int(rng.random() * n), n - 1)


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def _shuffle(rng: random.Random, items: list) -> None:
    """Fisher-Yates on `random()` only (`random.shuffle` is not guaranteed stable across versions)."""
    for i in range(len(items) - 1, 0, -1):
        j = _randint(rng, i + 1)
        items[i], items[j] = items[j], items[i]


def checked_index(index: int, n: int) -> int:
    """`index` as a position in [0, n) (negative counts from the end), or IndexError."""
    index = int(index)
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for a dataset of {n} images")
    return index % n


def _check_int(name: str, value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be {bound}, got {value}.")
    return int(value)


@dataclass(frozen=True)
class Scene:
    """One rendered sample with its ground truth.

    `masks` are the visible pixels of each object (n_objects x H x W, after occlusion) and
    `object_concepts` the concepts each object carries (n_objects x K; background excluded).
    """

    image: torch.Tensor
    label: int
    concepts: torch.Tensor
    masks: torch.Tensor
    object_concepts: torch.Tensor
    caption: str


class ConceptWorld:
    """Concept vocabulary and class signatures, shared by every split drawn from it.

    Signatures hold 3-5 concepts (always a shape and a colour, at most two of each object
    group and one background), are unique, none contains another, and each class has at
    least one scene that completes no other class's signature.
    """

    def __init__(self, n_classes: int = 50, seed: int = 0) -> None:
        self.n_classes = _check_int("n_classes", n_classes, MIN_CLASSES, MAX_CLASSES)
        self.seed = _check_int("seed", seed, -(2**63), 2**63 - 1)
        self.concept_names: list[str] = [*SHAPES, *COLOURS, *TEXTURES, *BACKGROUNDS]
        self.concept_groups: dict[str, list[str]] = {
            "shape": list(SHAPES),
            "colour": list(COLOURS),
            "texture": list(TEXTURES),
            "background": list(BACKGROUNDS),
        }
        self.concept_group_index: list[int] = [
            g for g, size in enumerate(_GROUP_SIZES) for _ in range(size)
        ]
        self._signatures: list[tuple[int, ...]] = []
        self._masks: list[int] = []  # signatures as bit masks, for fast containment tests
        self._fallbacks: list[tuple] = []  # per class, one scene known to be unambiguous
        self._draw_signatures()
        signatures = torch.zeros(self.n_classes, self.n_concepts, dtype=torch.bool)
        for c, sig in enumerate(self._signatures):
            signatures[c, list(sig)] = True
        self.class_signatures = signatures
        width = len(str(self.n_classes - 1))
        name_order = (_COLOUR, _TEXTURE, _SHAPE, _BACKGROUND)  # reads "red_striped_circle"
        self.class_names = [
            f"class_{c:0{width}d}_"
            + "_".join(
                self.concept_names[k].replace(" ", "_")
                for k in sorted(
                    sig, key=lambda k: (name_order.index(self.concept_group_index[k]), k)
                )
            )
            for c, sig in enumerate(self._signatures)
        ]
        self._renderers: dict[int, _Renderer] = {}

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    def __repr__(self) -> str:
        return f"ConceptWorld(n_classes={self.n_classes}, seed={self.seed})"

    def signature_names(self, label: int) -> list[str]:
        """The concept names of one class's signature, in vocabulary order."""
        return [self.concept_names[k] for k in self._signatures[label]]

    # -- world construction -------------------------------------------------------------------

    def _draw_signature(self, rng: random.Random) -> tuple[int, ...]:
        size = 3 + _randint(rng, 3)
        chosen = {_OFFSETS[_SHAPE] + _randint(rng, len(SHAPES))}
        chosen.add(_OFFSETS[_COLOUR] + _randint(rng, len(COLOURS)))
        counts = [1, 1, 0, 0]
        while len(chosen) < size:
            k = _randint(rng, self.n_concepts)
            g = self.concept_group_index[k]
            if k not in chosen and counts[g] < _SIGNATURE_CAPS[g]:
                chosen.add(k)
                counts[g] += 1
        return tuple(sorted(chosen))

    def _draw_signatures(self) -> None:
        """Draw all signatures, redrawing any class that cannot be shown unambiguously."""
        rng = random.Random(f"retrofit-concept-world/{self.seed}/{self.n_classes}")
        signatures: list[tuple[int, ...]] = []
        for _ in range(self.n_classes):
            signatures.append(self._new_signature(rng, signatures))
        for _ in range(100):
            self._masks = [sum(1 << k for k in sig) for sig in signatures]
            self._signatures = signatures
            fallbacks = [self._find_fallback(c, rng) for c in range(self.n_classes)]
            infeasible = [c for c, fb in enumerate(fallbacks) if fb is None]
            if not infeasible:
                self._fallbacks = fallbacks
                return
            for c in infeasible:
                others = signatures[:c] + signatures[c + 1 :]
                signatures[c] = self._new_signature(rng, others)
        raise RuntimeError("could not draw a feasible set of class signatures")

    def _new_signature(
        self, rng: random.Random, existing: Sequence[tuple[int, ...]]
    ) -> tuple[int, ...]:
        """A signature that neither equals, contains nor is contained in an existing one."""
        while True:
            sig = self._draw_signature(rng)
            s = set(sig)
            if all(not (s <= set(o) or set(o) <= s) for o in existing):
                return sig

    def _find_fallback(self, label: int, rng: random.Random) -> tuple | None:
        for _ in range(_FEASIBILITY_TRIES):
            attrs = self._draw_attributes(label, rng, allow_distractors=False)
            if self._is_unique(label, attrs):
                return attrs
        return None

    # -- scene sampling -----------------------------------------------------------------------

    def _draw_attributes(
        self, label: int, rng: random.Random, allow_distractors: bool
    ) -> tuple[tuple[tuple[int, int, int], ...], int]:
        """Objects as (shape, colour, texture) group-local ids, plus the background id."""
        sig = self._signatures[label]
        per_group: list[list[int]] = [[], [], [], []]
        for k in sig:
            g = self.concept_group_index[k]
            per_group[g].append(k - _OFFSETS[g])
        n_sig_objects = max(1, *(len(per_group[g]) for g in range(3)))
        slots = []
        for g in range(3):
            column: list[int | None] = [*per_group[g]] + [None] * (
                n_sig_objects - len(per_group[g])
            )
            _shuffle(rng, column)
            slots.append([v if v is not None else _randint(rng, _GROUP_SIZES[g]) for v in column])
        objects = list(zip(*slots))
        if allow_distractors:
            for _ in range(_randint(rng, MAX_OBJECTS - n_sig_objects + 1)):
                obj = []
                for g in range(3):
                    pool = [v for v in range(_GROUP_SIZES[g]) if v not in per_group[g]]
                    obj.append(pool[_randint(rng, len(pool))])
                objects.append(tuple(obj))
        _shuffle(rng, objects)
        bg = (
            per_group[_BACKGROUND][0] if per_group[_BACKGROUND] else _randint(rng, len(BACKGROUNDS))
        )
        return tuple(objects), bg

    @staticmethod
    def _attribute_mask(attrs: tuple) -> int:
        objects, bg = attrs
        mask = 1 << (_OFFSETS[_BACKGROUND] + bg)
        for obj in objects:
            for g, v in enumerate(obj):
                mask |= 1 << (_OFFSETS[g] + v)
        return mask

    def _is_unique(self, label: int, attrs: tuple) -> bool:
        """True when no class signature except `label`'s is contained in the scene's concepts."""
        v = self._attribute_mask(attrs)
        return all(m & v != m for c, m in enumerate(self._masks) if c != label)

    def sample_scene(self, label: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        """Draw one scene of class `label`: (objects x len(_OBJ_COLS), len(_IMG_COLS)) arrays."""
        for attempt in range(_SCENE_TRIES):
            attrs = self._draw_attributes(label, rng, allow_distractors=attempt < _DISTRACTOR_TRIES)
            if self._is_unique(label, attrs):
                break
        else:
            attrs = self._fallbacks[label]
        objects, bg = attrs
        n = len(objects)
        r_low, r_high = (0.18, 0.26) if n <= 2 else (0.14, 0.2)
        radii = [_uniform(rng, r_low, r_high) for _ in range(n)]
        centres = _place(rng, radii)
        rows = np.empty((n, len(_OBJ_COLS)), dtype=np.float32)
        for i, ((shape, colour, texture), (cx, cy, r)) in enumerate(zip(objects, centres)):
            rows[i] = object_row(rng, shape, colour, texture, (cx, cy, r))
        image = np.array(
            (bg, rng.random(), rng.random(), rng.random(), rng.random(), _uniform(rng, 0.9, 1.1)),
            dtype=np.float32,
        )
        return rows, image

    def renderer(self, image_size: int) -> _Renderer:
        """The (cached) renderer of this world at one image size."""
        if image_size not in self._renderers:
            self._renderers[image_size] = _Renderer(image_size, self.seed)
        return self._renderers[image_size]

    def caption(self, objects: np.ndarray, background: int) -> str:
        """'a red striped circle and an orange dotted star on a grass background'."""
        phrases = []
        for row in objects:
            shape, colour, texture = (int(x) for x in row[:3])
            words = f"{list(COLOURS)[colour]} {TEXTURES[texture]} {SHAPES[shape]}"
            article = "an" if words[0] in "aeiou" else "a"
            phrases.append(f"{article} {words}")
        listed = (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        )
        return f"{listed} on a {BACKGROUNDS[background]}"


def object_row(
    rng: random.Random, shape: int, colour: int, texture: int, place: tuple[float, float, float]
) -> tuple[float, ...]:
    """One object's `_OBJ_COLS`: what it is, where, and its random pose and shading."""
    return (
        shape,
        colour,
        texture,
        *place,
        _uniform(rng, -math.pi / 9, math.pi / 9),
        rng.random(),
        rng.random(),
        _uniform(rng, -0.05, 0.05),
        _uniform(rng, -0.05, 0.05),
        _uniform(rng, -0.05, 0.05),
        _uniform(rng, 0.85, 1.05),
    )


def _place(rng: random.Random, radii: list[float]) -> list[tuple[float, float, float]]:
    """Centres inside the image whose bounding circles overlap little, so every object stays visible."""
    radii = list(radii)
    while True:
        for _ in range(50):
            centres = [
                (_uniform(rng, r * 1.1, 1 - r * 1.1), _uniform(rng, r * 1.1, 1 - r * 1.1))
                for r in radii
            ]
            if all(
                math.dist(centres[i], centres[j]) >= 0.8 * (radii[i] + radii[j])
                for i in range(len(radii))
                for j in range(i)
            ):
                return [(x, y, r) for (x, y), r in zip(centres, radii)]
        radii = [r * 0.9 for r in radii]


# -- rendering ---------------------------------------------------------------------------------

_TRIANGLE_NORMALS = [
    (math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
]
_STAR_INNER = 0.45
_STAR_SECTOR = 2 * math.pi / 5
# Ray-edge intersection constants of the star edge from the outer vertex (1, 0) to the inner one.
_STAR_E = (_STAR_INNER * math.cos(_STAR_SECTOR / 2) - 1.0, _STAR_INNER * math.sin(_STAR_SECTOR / 2))
_STAR_P1_CROSS_E = 1.0 * _STAR_E[1]


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 0.81


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    (a, b), (c, d), (e, f) = _TRIANGLE_NORMALS
    return (u * a + v * b <= 0.48) & (u * c + v * d <= 0.48) & (u * e + v * f <= 0.48)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u) - math.pi / 2  # one point straight up
    phi = np.mod(theta, _STAR_SECTOR)
    phi = np.minimum(phi, _STAR_SECTOR - phi)
    # Distance to the edge along the ray at angle phi: (P1 x e) / (d x e).
    limit = _STAR_P1_CROSS_E / (np.cos(phi) * _STAR_E[1] - np.sin(phi) * _STAR_E[0])
    return rho <= limit


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.28) & (av <= 0.9)) | ((av <= 0.28) & (au <= 0.9))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho2 = u * u + v * v
    return (rho2 <= 0.9) & (rho2 >= 0.3)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) / 0.6 + np.abs(v) <= 0.95


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x = u * 1.2
    y = v * 1.2 + 0.15
    q = x * x + y * y - 1.0
    return q * q * q - x * x * y * y * y <= 0


_SHAPE_FNS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _circle,
    _square,
    _triangle,
    _star,
    _cross,
    _ring,
    _diamond,
    _heart,
)
_EXTENT = 1.0  # every shape lies within the unit disc of the object frame


def _pattern(texture: int, u: np.ndarray, v: np.ndarray, period: float, pu: float, pv: float):
    """Where the darker shade goes, in object coordinates (so textures turn with the object)."""
    if texture == 1:  # striped
        return np.mod(u / period + pu, 1.0) < 0.5
    if texture == 2:  # dotted
        period *= 1.15
        a = np.mod(u / period + pu, 1.0) - 0.5
        b = np.mod(v / period + pv, 1.0) - 0.5
        return a * a + b * b < 0.09
    if texture == 3:  # checkered
        return (np.floor(u / period + pu) + np.floor(v / period + pv)) % 2 == 0
    return None


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a small 2-D grid by two interpolation matrices (smooth noise)."""

    def weights(n_out: int, n_in: int) -> np.ndarray:
        pos = np.linspace(0, n_in - 1, n_out)
        lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
        frac = pos - lo
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), lo] = 1 - frac
        w[np.arange(n_out), lo + 1] = frac
        return w

    return weights(height, grid.shape[0]) @ grid @ weights(width, grid.shape[1]).T


class _Renderer:
    """Precomputed backgrounds and noise for one image size; renders scenes with numpy."""

    def __init__(self, image_size: int, seed: int) -> None:
        self.size = s = image_size
        self.pad = max(8, s // 4)
        self.coords = np.arange(s, dtype=np.float32) + 0.5
        rng = np.random.Generator(np.random.PCG64([seed % 2**64, s, 0x5EED]))
        self.backgrounds = self._backgrounds(rng, s + self.pad)
        u1 = rng.random((3, 2 * s, 2 * s))
        u2 = rng.random((3, 2 * s, 2 * s))
        gauss = np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * math.pi * u2)
        self.noise = (0.03 * gauss).astype(np.float32)

    @staticmethod
    def _backgrounds(rng: np.random.Generator, n: int) -> np.ndarray:
        y = np.linspace(0.0, 1.0, n)[:, None]
        x = np.linspace(0.0, 1.0, n)[None, :]

        def smooth(cells_y: int, cells_x: int) -> np.ndarray:
            return _upsample(rng.random((cells_y + 1, cells_x + 1)), n, n) - 0.5

        def fill(rgb: Sequence[float]) -> np.ndarray:
            return np.broadcast_to(np.asarray(rgb)[:, None, None], (3, n, n)).copy()

        dark = fill((0.07, 0.07, 0.09)) + 0.08 * smooth(4, 4) + 0.03 * (rng.random((n, n)) - 0.5)
        blades = smooth(5, max(8, n // 3))
        grass = fill((0.20, 0.45, 0.13)) + np.stack([0.15, 0.35, 0.08])[:, None, None] * (
            blades + 0.5 * smooth(6, 6)
        )
        sky = fill((0.35, 0.60, 0.95)) + np.stack([0.45, 0.30, 0.05])[:, None, None] * y
        clouds = np.clip((smooth(3, 5) - 0.1) * 3.0, 0.0, 1.0)
        sky = sky * (1 - 0.6 * clouds) + 0.6 * clouds
        sand = fill((0.86, 0.74, 0.50)) + 0.08 * smooth(6, 6) + 0.10 * (rng.random((n, n)) - 0.5)
        ripple = np.sin(2 * math.pi * (6 * y + 0.15 * np.sin(2 * math.pi * (2 * x + 0.8 * y))))
        water = fill((0.08, 0.30, 0.55)) + np.stack([0.05, 0.08, 0.10])[:, None, None] * ripple
        water = water + 0.05 * smooth(4, 4)
        stacked = np.stack([dark, grass, sky, sand, water]).astype(np.float32)
        return np.clip(stacked, 0.0, 1.0)

    def render(self, objects: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(3 x H x W float32 image in [0, 1], H x W int8 map of the object visible at each pixel)."""
        s, pad = self.size, self.pad
        bg, bg_x, bg_y, nz_x, nz_y, brightness = image.tolist()
        ox, oy = int(bg_x * pad), int(bg_y * pad)
        img = self.backgrounds[int(bg), :, oy : oy + s, ox : ox + s].copy()
        owner = np.full((s, s), -1, dtype=np.int8)
        colours = list(COLOURS.values())
        for i, row in enumerate(objects.tolist()):
            shape, colour, texture, cx, cy, r, angle, pu, pv, jr, jg, jb, shade = row
            cx, cy, r = cx * s, cy * s, r * s
            half = r * _EXTENT + 1
            x0, x1 = max(0, int(cx - half)), min(s, int(cx + half) + 1)
            y0, y1 = max(0, int(cy - half)), min(s, int(cy + half) + 1)
            dx = (self.coords[x0:x1] - cx) / r
            dy = (cy - self.coords[y0:y1]) / r  # y up in the object frame
            c, sn = math.cos(angle), math.sin(angle)
            u = c * dx[None, :] + sn * dy[:, None]
            v = -sn * dx[None, :] + c * dy[:, None]
            mask = _SHAPE_FNS[int(shape)](u, v)
            base = np.clip(np.asarray(colours[int(colour)]) * shade + (jr, jg, jb), 0.0, 1.0)
            base = base.astype(np.float32)[:, None, None]
            period = max(0.5, 5.0 / r)
            dark_where = _pattern(int(texture), u, v, period, pu, pv)
            pixels = base if dark_where is None else np.where(dark_where, 0.5 * base, base)
            region = img[:, y0:y1, x0:x1]
            np.copyto(region, np.broadcast_to(pixels, region.shape), where=mask[None])
            owner[y0:y1, x0:x1][mask] = i
        nx, ny = int(nz_x * s), int(nz_y * s)
        img *= brightness
        img += self.noise[:, ny : ny + s, nx : nx + s]
        np.clip(img, 0.0, 1.0, out=img)
        return img, owner


@functools.lru_cache(maxsize=16)
def concept_world(n_classes: int = 50, seed: int = 0) -> ConceptWorld:
    """The shared `ConceptWorld` for (n_classes, seed), built once per process."""
    return ConceptWorld(n_classes, seed)


class SyntheticConceptDataset(Dataset):
    """`n_images` scenes of one split of a concept world, rendered lazily: `(image, label)`.

    `image` is a float32 CHW tensor in [0, 1] (a PIL image when `as_pil=True`); `transform`,
    if given, is applied to it. Scene parameters, concepts and captions are drawn up front
    (cheap); pixels are rendered on access. Pass `world` to share one explicitly (then
    `n_classes` and `seed` are taken from it).
    """

    synthetic_world = True  # the tiny CLIP's world (retrofit.concepts.guard)

    def __init__(
        self,
        n_images: int,
        n_classes: int = 50,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        transform: Callable | None = None,
        as_pil: bool = False,
        world: ConceptWorld | None = None,
    ) -> None:
        self.n_images = _check_int("n_images", n_images, 0, None)
        self.image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}.")
        if transform is not None and not callable(transform):
            raise ConfigError(
                f"transform must be callable or None, got {type(transform).__name__}."
            )
        if world is not None and not isinstance(world, ConceptWorld):
            raise ConfigError(f"world must be a ConceptWorld or None, got {type(world).__name__}.")
        self.world = (
            world
            if world is not None
            else concept_world(
                _check_int("n_classes", n_classes, MIN_CLASSES, MAX_CLASSES),
                _check_int("seed", seed, -(2**63), 2**63 - 1),
            )
        )
        self.split = split
        self.transform = transform
        self.as_pil = bool(as_pil)
        self._renderer = self.world.renderer(self.image_size)

        n_classes = self.world.n_classes
        self.labels = torch.arange(self.n_images, dtype=torch.long) % n_classes
        self._objects: list[np.ndarray] = []
        images = np.empty((self.n_images, len(_IMG_COLS)), dtype=np.float32)
        concepts = np.zeros((self.n_images, self.world.n_concepts), dtype=bool)
        self.captions: list[str] = []
        for i in range(self.n_images):
            rng = random.Random(f"retrofit-scene/{self.world.seed}/{n_classes}/{split}/{i}")
            objects, image = self.world.sample_scene(i % n_classes, rng)
            self._objects.append(objects)
            images[i] = image
            concepts[i, _OFFSETS[_BACKGROUND] + int(image[0])] = True
            for g in range(3):
                concepts[i, _OFFSETS[g] + objects[:, g].astype(int)] = True
            self.captions.append(self.world.caption(objects, int(image[0])))
        self._images = images
        self.concepts = torch.from_numpy(concepts)
        logger.debug("drew %d scenes of %s, split %r", self.n_images, self.world, split)

    # Views of the world, so a dataset is self-describing.
    @property
    def class_names(self) -> list[str]:
        return self.world.class_names

    @property
    def concept_names(self) -> list[str]:
        return self.world.concept_names

    @property
    def concept_groups(self) -> dict[str, list[str]]:
        return self.world.concept_groups

    @property
    def class_signatures(self) -> torch.Tensor:
        return self.world.class_signatures

    @property
    def targets(self) -> list[int]:
        """Labels as a list, like torchvision datasets."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return self.n_images

    def _index(self, index: int) -> int:
        return checked_index(index, self.n_images)

    def render(self, index: int) -> Scene:
        """The image of `index` with its full ground truth (concepts, masks, caption)."""
        index = self._index(index)
        objects = self._objects[index]
        img, owner = self._renderer.render(objects, self._images[index])
        n = len(objects)
        owner_t = torch.from_numpy(owner.astype(np.int64))
        masks = owner_t[None] == torch.arange(n)[:, None, None]
        object_concepts = torch.zeros(n, self.world.n_concepts, dtype=torch.bool)
        for g in range(3):
            object_concepts[
                torch.arange(n), _OFFSETS[g] + torch.from_numpy(objects[:, g]).long()
            ] = True
        return Scene(
            image=torch.from_numpy(img),
            label=int(self.labels[index]),
            concepts=self.concepts[index].clone(),
            masks=masks,
            object_concepts=object_concepts,
            caption=self.captions[index],
        )

    def masks(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible object masks (n_objects x H x W bool) and their concepts (n_objects x K bool)."""
        scene = self.render(index)
        return scene.masks, scene.object_concepts

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        index = self._index(index)
        img, _ = self._renderer.render(self._objects[index], self._images[index])
        image: torch.Tensor | Image.Image = torch.from_numpy(img)
        if self.as_pil:
            image = Image.fromarray((img.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
