"""Image/text encoders that put images and concept words in one embedding space (CLIP-style).

`ConceptEncoder` is the small interface naming needs: `encode_images` and `encode_texts`, both
returning L2-normalised rows, plus its own `preprocess` (resolution, mean, std). Images come
from the user's loader normalised for *their* classifier, so they are first mapped back to
[0, 1] from a stated input normalisation, then resized and re-normalised for the encoder.

Backends, registered by name so `load_encoder("open_clip:MODEL:TAG")` works from a config
(`register_encoder("NAME")` adds one: specs "NAME[:REST]" then reach its factory):
  tiny       the committed tiny CLIP of the synthetic world.
  open_clip  `OpenCLIPEncoder`: open_clip's own model code; a pretrained tag or a local
             safetensors checkpoint.
  hf         `HFCLIPEncoder`: transformers' `CLIPModel` with its tokenizer and image
             processor, from a hub id or a local folder.
Embeddings are cached on disk (safetensors, atomic) under fingerprints of the encoder weights,
its preprocessing, the input normalisation and each batch's pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from retrofit.errors import CacheError, ConfigError, DataError, ModelError
from retrofit.extraction.fingerprint import (
    batch_fingerprint,
    model_fingerprint,
    settings_fingerprint,
)
from retrofit.extraction.loaders import as_batches, dataset_length, iterate
from retrofit.io.files import atomic_save_safetensors
from retrofit.io.weights import load_matching_state

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP_WEIGHTS = "tiny_clip.safetensors"
TINY_CLIP_SETTINGS = "tiny_clip.json"
TINY_CLIP_COMMAND = "python scripts/train_tiny_clip.py"
# Pixel values this far outside [0, 1] mean the images are still normalised for the classifier.
_RANGE_SLACK = 0.02
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class Preprocess:
    """How an encoder wants its pixels: square side, per-channel mean/std, resize filter.

    Called on images in [0, 1]: resize the shorter side to `image_size`, centre-crop, normalise.
    """

    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ConfigError(f"image_size must be an integer, got {self.image_size!r}.")
        if self.image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {self.image_size}.")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"mean and std must have 3 entries with std > 0, got {self.mean} and {self.std}."
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {list(_INTERPOLATIONS)}, got {self.interpolation!r}."
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        h, w = images.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            new = (max(size, round(h * scale)), max(size, round(w * scale)))
            smooth = self.interpolation != "nearest"
            images = F.interpolate(
                images,
                size=new,
                mode=self.interpolation,
                antialias=smooth and scale < 1,
                **({"align_corners": False} if smooth else {}),
            )
            top, left = (new[0] - size) // 2, (new[1] - size) // 2
            images = images[..., top : top + size, left : left + size].clamp(0.0, 1.0)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_unit_range(
    images: torch.Tensor,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Undo the loader's normalisation so images are float RGB in [0, 1], or say what to pass."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DataError(
            "Concept encoders take image batches shaped (N, C, H, W); got "
            f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}."
        )
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    images = images.float()
    if (input_mean is None) != (input_std is None):
        raise ConfigError(
            "Pass both input_mean and input_std (the loader's Normalize), or neither."
        )
    if input_mean is not None:
        mean = torch.as_tensor(input_mean, dtype=images.dtype, device=images.device)
        std = torch.as_tensor(input_std, dtype=images.dtype, device=images.device)
        if mean.numel() not in (1, images.shape[1]) or std.numel() not in (1, images.shape[1]):
            raise ConfigError(
                f"input_mean/input_std need 1 or {images.shape[1]} entries (one per channel), "
                f"got {mean.numel()} and {std.numel()}."
            )
        images = images * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != 3:
        raise DataError(
            f"Concept encoders need RGB (3-channel) or grey (1-channel) images, got {images.shape[1]} channels."
        )
    low, high = float(images.min()), float(images.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        hint = (
            "They look normalised for the classifier: pass input_mean= and input_std= (the "
            "Normalize your loader applies, e.g. ImageNet mean=(0.485, 0.456, 0.406), "
            "std=(0.229, 0.224, 0.225)) so they can be re-normalised for the concept encoder."
            if input_mean is None
            else "The input_mean/input_std given do not match the loader's normalisation."
        )
        raise DataError(f"Images have values in [{low:.2f}, {high:.2f}], not in [0, 1]. {hint}")
    return images.clamp(0.0, 1.0)


class ConceptEncoder(ABC):
    """Embeds images and texts into one space; subclasses provide the two raw forward passes."""

    backend: str = ""

    def __init__(self, preprocess: Preprocess, device: str | torch.device | None, batch_size: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.preprocess = preprocess
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @property
    @abstractmethod
    def spec(self) -> str:
        """A string `load_encoder` rebuilds this encoder from (stored in configs)."""

    @abstractmethod
    def _module(self) -> nn.Module:
        """The torch module holding every weight (fingerprinted)."""

    @abstractmethod
    def _tokenizer_id(self) -> dict[str, Any]:
        """What identifies the tokenizer (its vocabulary and settings) in the fingerprint."""

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw image embeddings of preprocessed pixels on `self.device`."""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """Raw text embeddings."""

    @property
    def fingerprint(self) -> str:
        """Hash of the weights, tokenizer and preprocessing: keys the embedding caches."""
        if self._fingerprint is None:
            self._fingerprint = settings_fingerprint(
                {
                    "backend": self.backend,
                    "weights": model_fingerprint(self._module()),
                    "tokenizer": self._tokenizer_id(),
                    "preprocess": self.preprocess.to_dict(),
                }
            )
        return self._fingerprint

    def to(self, device: str | torch.device) -> ConceptEncoder:
        self.device = torch.device(device)
        self._module().to(self.device)
        return self

    @torch.no_grad()
    def encode_images(
        self,
        images: torch.Tensor,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """L2-normalised (N, E) embeddings of images given as the loader yields them."""
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = to_unit_range(images[start : start + self.batch_size], input_mean, input_std)
            pixels = self.preprocess(chunk.to(self.device))
            out.append(F.normalize(self._image_features(pixels).float(), dim=-1).cpu())
        if not out:
            raise DataError("No images to encode.")
        return torch.cat(out)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised (V, E) embeddings of texts."""
        texts = list(texts)
        if not texts:
            raise ConfigError("No texts to encode: the concept vocabulary is empty.")
        if not all(isinstance(t, str) for t in texts):
            raise ConfigError("Texts to encode must all be strings.")
        out = [
            F.normalize(self._text_features(texts[s : s + self.batch_size]).float(), dim=-1).cpu()
            for s in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, image_size={self.preprocess.image_size})"


def _check_safetensors(path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelError(f"{what} {path} does not exist; pass the path of a .safetensors file.")
    if path.suffix != ".safetensors":
        raise ModelError(
            f"{what} {path} is not a .safetensors file; retrofit never unpickles weights. Convert "
            "it once with safetensors.torch.save_file(torch.load(path, weights_only=True), "
            "'model.safetensors') and pass that file."
        )


class OpenCLIPEncoder(ConceptEncoder):
    """An open_clip model: `OpenCLIPEncoder("ViT-B-32", "laion2b_s34b_b79k")`, a local
    safetensors checkpoint (`checkpoint=`), or an already built model with its tokenizer."""

    backend = "open_clip"

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        model: nn.Module | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        preprocess: Preprocess | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 256,
    ) -> None:
        import open_clip

        self.model_name, self.pretrained = model_name, pretrained
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        if model is None:
            if model_name is None:
                raise ConfigError(
                    "OpenCLIPEncoder needs model_name (e.g. 'ViT-B-32'), or model= a built model."
                )
            model = self._create(open_clip, model_name, pretrained, checkpoint)
        if tokenizer is None:
            tokenizer = self._tokenizer(open_clip, model, model_name)
        if preprocess is None:
            cfg = open_clip.get_model_preprocess_cfg(model)
            size = cfg.get("size", 224)
            size = size[0] if isinstance(size, (tuple, list)) else size
            interpolation = cfg.get("interpolation", "bicubic")
            preprocess = Preprocess(
                int(size),
                tuple(cfg.get("mean", OPENAI_MEAN)),
                tuple(cfg.get("std", OPENAI_STD)),
                interpolation if interpolation in _INTERPOLATIONS else "bicubic",
            )
        super().__init__(preprocess, device, batch_size)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer

    @staticmethod
    def _create(
        open_clip: Any, model_name: str, pretrained: str | None, checkpoint: Any
    ) -> nn.Module:
        if checkpoint is not None:
            path = Path(checkpoint)
            _check_safetensors(path, "open_clip checkpoint")
        try:
            model = open_clip.create_model(
                model_name, pretrained=None if checkpoint is not None else pretrained, device="cpu"
            )
        except Exception as error:
            raise ModelError(
                f"Could not load the open_clip model {model_name!r} (pretrained={pretrained!r}): "
                f"{error}. Without network access, download the weights elsewhere and pass "
                f"OpenCLIPEncoder({model_name!r}, checkpoint='/path/open_clip_model.safetensors') "
                "(or the spec 'open_clip:MODEL:/path/file.safetensors'); the model names open_clip "
                "knows are listed by open_clip.list_models()."
            ) from error
        if checkpoint is not None:
            state = load_file(str(checkpoint))
            try:
                model.load_state_dict(state)
            except RuntimeError as error:
                raise ModelError(
                    f"The checkpoint {checkpoint} does not fit open_clip's {model_name!r}: {error}"
                ) from error
        return model

    @staticmethod
    def _tokenizer(open_clip: Any, model: nn.Module, model_name: str | None) -> Callable:
        if model_name is None:
            context = int(getattr(model, "context_length", 77))
            return open_clip.SimpleTokenizer(context_length=context)
        try:
            return open_clip.get_tokenizer(model_name)
        except Exception as error:
            raise ModelError(
                f"Could not load the tokenizer of open_clip model {model_name!r}: {error}. "
                "Pass tokenizer= a callable turning a list of texts into token ids."
            ) from error

    @property
    def spec(self) -> str:
        source = self.checkpoint or self.pretrained
        name = self.model_name or "custom"
        return f"open_clip:{name}" + (f":{source}" if source else "")

    def _module(self) -> nn.Module:
        return self.model

    def _tokenizer_id(self) -> dict[str, Any]:
        return {
            "type": type(self.tokenizer).__name__,
            "context_length": getattr(self.tokenizer, "context_length", None),
            "vocab_size": getattr(self.tokenizer, "vocab_size", None),
        }

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class HFCLIPEncoder(ConceptEncoder):
    """A transformers `CLIPModel` (+ tokenizer and image processor) from a hub id or a local
    folder written by `model.save_pretrained` and `processor.save_pretrained`."""

    backend = "hf"

    def __init__(
        self,
        name_or_path: str | os.PathLike | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Any | None = None,
        preprocess: Preprocess | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        batch_size: int = 256,
    ) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.name_or_path = str(name_or_path) if name_or_path is not None else None
        if model is None:
            if name_or_path is None:
                raise ConfigError(
                    "HFCLIPEncoder needs name_or_path (a hub id or a local folder), or model=."
                )
            model = self._load(CLIPModel.from_pretrained, "model", local_files_only)
        if tokenizer is None:
            if name_or_path is None:
                raise ConfigError("HFCLIPEncoder(model=...) also needs tokenizer=.")
            tokenizer = self._load(AutoTokenizer.from_pretrained, "tokenizer", local_files_only)
        if preprocess is None:
            preprocess = self._preprocess(CLIPImageProcessor, model, local_files_only)
        super().__init__(preprocess, device, batch_size)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def _load(self, loader: Callable, what: str, local_files_only: bool) -> Any:
        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        if what == "model":
            kwargs["use_safetensors"] = True
        try:
            return loader(self.name_or_path, **kwargs)
        except Exception as error:
            raise ModelError(
                f"Could not load the CLIP {what} from {self.name_or_path!r}: {error}. Without "
                "network access, save it once where you have one (CLIPModel.from_pretrained(ID)"
                ".save_pretrained(DIR) and CLIPProcessor.from_pretrained(ID).save_pretrained(DIR), "
                "weights as model.safetensors) and pass HFCLIPEncoder(DIR) or the spec 'hf:DIR'."
            ) from error

    def _preprocess(
        self, processor_cls: Any, model: nn.Module, local_files_only: bool
    ) -> Preprocess:
        size = int(model.config.vision_config.image_size)
        if self.name_or_path is not None:
            try:
                processor = processor_cls.from_pretrained(
                    self.name_or_path, local_files_only=local_files_only
                )
                return Preprocess(
                    size, tuple(processor.image_mean), tuple(processor.image_std), "bicubic"
                )
            except Exception as error:  # no preprocessor_config.json: CLIP's own defaults
                logger.warning(
                    "no image processor config in %s (%s); using CLIP's mean/std at %d px",
                    self.name_or_path,
                    error,
                    size,
                )
        return Preprocess(size)

    @property
    def spec(self) -> str:
        return f"hf:{self.name_or_path or 'custom'}"

    def _module(self) -> nn.Module:
        return self.model

    def _tokenizer_id(self) -> dict[str, Any]:
        vocab = self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}
        return {
            "type": type(self.tokenizer).__name__,
            "vocab": settings_fingerprint(vocab),
            "max_length": self.max_length,
        }

    @staticmethod
    def _pooled(output: Any) -> torch.Tensor:
        """transformers 5 returns a ModelOutput whose pooler_output is the projection."""
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return self._pooled(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
            )
        )


def _weights_dir() -> Path:
    return Path(str(resources.files("retrofit") / "weights"))


def tiny_clip_settings() -> dict[str, Any]:
    """The committed tiny CLIP's config, tokenizer, training settings and measured accuracy."""
    path = _weights_dir() / TINY_CLIP_SETTINGS
    if not path.is_file():
        raise ModelError(
            f"The tiny CLIP settings are missing ({path}); regenerate them with "
            f"`{TINY_CLIP_COMMAND}` from the repository root, or pass encoder= another CLIP."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def build_open_clip(config: dict[str, Any]) -> nn.Module:
    """An `open_clip.CLIP` from a JSON config {embed_dim, vision_cfg, text_cfg, ...}."""
    import open_clip

    try:
        return open_clip.CLIP(**config)
    except TypeError as error:
        raise ModelError(f"Invalid open_clip.CLIP config {config}: {error}") from error


def load_tiny_clip(
    device: str | torch.device | None = None,
    batch_size: int = 256,
    folder: str | os.PathLike | None = None,
) -> OpenCLIPEncoder:
    """The tiny CLIP trained on the synthetic world's captions (shipped, no download), or one
    that `scripts/train_tiny_clip.py --output FOLDER` trained (its two files in `folder`)."""
    import open_clip

    if folder is None:
        settings = tiny_clip_settings()
        path = _weights_dir() / TINY_CLIP_WEIGHTS
    else:
        settings_path = Path(folder) / TINY_CLIP_SETTINGS
        if not settings_path.is_file():
            raise ModelError(
                f"{folder} holds no {TINY_CLIP_SETTINGS}; pass a folder written by "
                f"`{TINY_CLIP_COMMAND} --output FOLDER`."
            )
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
        path = Path(folder) / TINY_CLIP_WEIGHTS
    _check_safetensors(path, "The tiny CLIP weights")
    model = build_open_clip(settings["model"])
    load_matching_state(
        model,
        path,
        f"{path} does not match the config in {TINY_CLIP_SETTINGS}; regenerate both with "
        f"`{TINY_CLIP_COMMAND}`.",
    )
    tokenizer = open_clip.SimpleTokenizer(context_length=settings["tokenizer"]["context_length"])
    encoder = OpenCLIPEncoder(
        model=model,
        tokenizer=tokenizer,
        preprocess=Preprocess(**settings["preprocess"]),
        device=device,
        batch_size=batch_size,
    )
    encoder.model_name = "tiny"
    if folder is not None:
        encoder.checkpoint = os.fspath(folder)  # spec "open_clip:tiny:FOLDER"
    return encoder


# spec backend ("tiny", "open_clip", "hf", ...) -> factory(rest after "NAME:", device)
EncoderFactory = Callable[[str, Any], ConceptEncoder]
ENCODERS: dict[str, EncoderFactory] = {}
_BACKEND = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]+")  # two characters at least: not a drive letter
SPEC_FORMS = (
    "'tiny', 'open_clip:MODEL:TAG', 'open_clip:MODEL:/path/file.safetensors', 'hf:HUB_ID_OR_DIR'"
)


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register a factory for encoder specs "NAME" or "NAME:REST" (one file per backend); it is
    called as factory(rest, device) and raises ConfigError for a rest it cannot read."""
    if not _BACKEND.fullmatch(name):
        raise ConfigError(f"An encoder backend name must look like 'my_clip', got {name!r}.")

    def decorate(factory: EncoderFactory) -> EncoderFactory:
        ENCODERS[name] = factory
        return factory

    return decorate


def unregister_encoder(name: str) -> None:
    ENCODERS.pop(name, None)


def available_encoders() -> list[str]:
    return sorted(ENCODERS)


def encoder_backend(text: str) -> str | None:
    """The registered backend a spec string names ("hf" for "hf:DIR"); None when it names none."""
    name = text.partition(":")[0]
    return name if name in ENCODERS else None


def unknown_backend(text: str) -> str | None:
    """The prefix of a string that reads as "NAME:REST" with an unregistered NAME (and is not an
    existing file), so it is reported rather than taken for a vocabulary file name."""
    name, sep, _ = text.partition(":")
    if not sep or name in ENCODERS or not _BACKEND.fullmatch(name) or Path(text).exists():
        return None
    return name


def unknown_backend_error(text: str, name: str) -> ConfigError:
    return ConfigError(
        f"Unknown encoder spec {text!r}: no concept encoder {name!r} is registered; registered "
        f"are {available_encoders()} ({SPEC_FORMS}). A new one is registered with "
        "retrofit.concepts.register_encoder."
    )


@register_encoder("tiny")
def _tiny_from_spec(rest: str, device: Any) -> OpenCLIPEncoder:
    """'tiny' (the shipped weights) or 'tiny:FOLDER' (a retrained tiny CLIP's two files)."""
    return load_tiny_clip(device, folder=rest or None)


@register_encoder("open_clip")
def _open_clip_from_spec(rest: str, device: Any) -> OpenCLIPEncoder:
    if not rest:
        raise ConfigError(
            "Expected 'open_clip:MODEL:TAG' or 'open_clip:MODEL:/path/ckpt.safetensors'."
        )
    if rest == "tiny" or rest.startswith("tiny:"):
        return load_tiny_clip(device, folder=rest[len("tiny:") :] or None)
    if rest.startswith("hf-hub:"):
        return OpenCLIPEncoder(rest, device=device)
    name, _, source = rest.partition(":")
    if source and (source.endswith(".safetensors") or os.sep in source):
        return OpenCLIPEncoder(name, checkpoint=source, device=device)
    return OpenCLIPEncoder(name, source or None, device=device)


@register_encoder("hf")
def _hf_from_spec(rest: str, device: Any) -> HFCLIPEncoder:
    if not rest:
        raise ConfigError("Expected 'hf:HUB_ID_OR_DIR' (a CLIP model id or local folder).")
    return HFCLIPEncoder(rest, device=device)


def load_encoder(
    spec: str | ConceptEncoder | None = None, device: str | torch.device | None = None
) -> ConceptEncoder:
    """An encoder from a spec: None or "tiny" (the shipped tiny CLIP), "open_clip:MODEL:TAG",
    "open_clip:MODEL:/path/ckpt.safetensors", "hf:HUB_ID_OR_DIR", or any registered backend
    "NAME[:REST]" (register_encoder); encoders pass through."""
    if isinstance(spec, ConceptEncoder):
        return spec.to(device) if device is not None else spec
    if spec is None:
        return load_tiny_clip(device)
    if not isinstance(spec, str):
        raise ConfigError(
            f"encoder must be a ConceptEncoder, a spec string or None, got {type(spec).__name__}."
        )
    backend = encoder_backend(spec)
    if backend is None:
        raise unknown_backend_error(spec, spec.partition(":")[0])
    encoder = ENCODERS[backend](spec.partition(":")[2], device)
    if not isinstance(encoder, ConceptEncoder):
        raise ConfigError(
            f"The encoder factory for {backend!r} returned {type(encoder).__name__}, not a "
            "retrofit.concepts.ConceptEncoder."
        )
    return encoder


def _cache_path(cache_dir: str | os.PathLike, kind: str, key: str) -> Path:
    folder = Path(cache_dir) / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheError(
            f"Cannot create the embedding cache {folder} ({error}); pass cache_dir= a writable "
            "folder or None."
        ) from error
    return folder / f"{key}.safetensors"


def _cached(path: Path | None, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Read `name` from `path` when present and readable, else compute it and write it there."""
    if path is not None and path.is_file():
        try:
            return load_file(str(path))[name]
        except Exception:  # unreadable: recompute, never trust it
            logger.warning("ignoring unreadable embedding cache %s", path)
    value = compute()
    if path is not None:
        atomic_save_safetensors({name: value}, path, {"format": "retrofit-embeddings"})
    return value


def embed_batch(
    encoder: ConceptEncoder,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Normalised embeddings of one batch, cached under a fingerprint of the encoder, the input
    normalisation and the batch's pixels and labels."""
    path = None
    if cache_dir is not None:
        norm = {
            "mean": None if input_mean is None else [float(v) for v in input_mean],
            "std": None if input_std is None else [float(v) for v in input_std],
        }
        key = settings_fingerprint(
            {
                "encoder": encoder.fingerprint,
                "input": norm,
                "batch": batch_fingerprint(images, labels),
            }
        )
        path = _cache_path(cache_dir, "concept_images", key)
    return _cached(
        path,
        "embeddings",
        lambda: encoder.encode_images(images, input_mean=input_mean, input_std=input_std),
    )


def embed_images(
    encoder: ConceptEncoder,
    data: Iterable | torch.Tensor | Any,
    *,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, E) normalised image embeddings of a loader, Dataset or image tensor, and the labels
    (None for a tensor). With `cache_dir`, batches already embedded are read back."""
    if isinstance(data, torch.Tensor):
        batches: Iterable = (
            (chunk, torch.zeros(len(chunk), dtype=torch.long)) for chunk in data.split(batch_size)
        )
        total: int | None = len(data)
    else:
        batches = iterate(as_batches(data, batch_size=batch_size))
        total = dataset_length(data)
    embeddings, labels = [], []
    with tqdm(total=total, unit="img", desc="embed images", disable=not progress) as bar:
        for images, batch_labels in batches:
            embeddings.append(
                embed_batch(
                    encoder,
                    images,
                    batch_labels,
                    input_mean=input_mean,
                    input_std=input_std,
                    cache_dir=cache_dir,
                )
            )
            labels.append(batch_labels)
            bar.update(len(images))
    if not embeddings:
        raise DataError("The probe data yielded no images; check that it is not empty.")
    return torch.cat(embeddings), None if isinstance(data, torch.Tensor) else torch.cat(labels)


def embed_concepts(
    encoder: ConceptEncoder,
    concepts: Sequence[str],
    templates: Sequence[str] = ("{}",),
    *,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """(V, E) normalised concept embeddings: each concept's prompt templates, averaged."""
    concepts, templates = list(concepts), list(templates)
    if not templates:
        raise ConfigError("At least one prompt template (like '{}') is needed.")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ConfigError(f"Prompt templates must contain '{{}}' exactly once; got {bad}.")

    def compute() -> torch.Tensor:
        prompts = [t.format(c) for c in concepts for t in templates]
        emb = encoder.encode_texts(prompts).view(len(concepts), len(templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    path = None
    if cache_dir is not None:
        key = settings_fingerprint(
            {"encoder": encoder.fingerprint, "templates": templates, "concepts": concepts}
        )
        path = _cache_path(cache_dir, "concept_texts", key)
    emb = _cached(path, "embeddings", compute)
    if not math.isfinite(float(emb.sum())):
        raise ModelError(f"The encoder {encoder.spec} produced non-finite text embeddings.")
    return emb
