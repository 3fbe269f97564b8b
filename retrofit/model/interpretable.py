"""InterpretableModel: backbone ▸ hook ▸ bottleneck ▸ head, as one nn.Module.

Three methods are façades over modules that build on this one and so import it: `edit`
(retrofit.edit), `to_transformers` and the transformers-style `forward(pixel_values=...)`
(retrofit.model.hf). They import inside the method; tests/test_import_graph.py allows exactly these.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, TransformersViewError
from retrofit.export import push_to_hub, read_export, resolve_export, save
from retrofit.extraction.hooks import FeatureCapture, LayerSpec
from retrofit.fitting.bottleneck import Bottleneck, FixedHead
from retrofit.methods.base import method_traits
from retrofit.methods.flint.relevance import check_tau, class_relevance
from retrofit.model.explanation import Explanation, explain

if TYPE_CHECKING:
    import os
    from pathlib import Path


class InterpretableModel(nn.Module):
    """The original backbone with its head replaced by a compact, interpretable one.

    forward(images) returns logits; `forward_features` does the same from cached pooled
    features, which is how every stage after extraction works without rerunning the backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        spec: LayerSpec,
        bottleneck: Bottleneck,
        head: FixedHead,
        config: RetrofitConfig,
        class_names: list[str] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.bottleneck = bottleneck
        self.head = head
        self.config = config
        self.class_names = (
            list(class_names)
            if class_names is not None
            else [f"class_{c}" for c in range(head.weight.shape[0])]
        )
        self.stats: dict[str, Any] = dict(stats or {})
        self.concepts: list[list[dict[str, Any]]] = [[] for _ in range(self.n_features)]
        # class-conditional names: (class, feature) -> {"concept", "status", "auc", ...}; why
        # this class uses this feature, which may differ from the feature's global best concept
        self.pair_concepts: dict[tuple[int, int], dict[str, Any]] = {}
        # provenance of human edits (retrofit.edit), oldest first; the export keeps it
        self.edits: list[dict[str, Any]] = []
        # FLINT global relevance r_{j,c} (C, n_features) on the training images: set by convert
        # for models on FLINT attributes, by measure_relevance() for any other
        self.class_relevance: torch.Tensor | None = None
        # how the base model reads an image (input size, mean/std, ...), from the export
        self.preprocessing: dict[str, Any] | None = None

    def __repr__(self) -> str:
        """The interpretable parts in a few lines; the backbone by class and hooked layer only
        (`print(imodel.backbone)` shows all of it)."""
        named = sum(1 for row in self.concepts if row and row[0].get("accepted", True))
        names = (
            f"{named} of {self.n_features} features named"
            if any(self.concepts)
            else "none (convert with concepts=...)"
        )
        return (
            f"InterpretableModel(\n  method: {self.config.method}, {self.num_classes} classes, "
            f"{self.config.per_class} features per class\n"
            f"  (backbone): {type(self.backbone).__name__} (features read at "
            f"{self.spec.name!r})\n  (bottleneck): Bottleneck({self.bottleneck.extra_repr()})\n"
            f"  (head): FixedHead({self.head.extra_repr()})\n"
            f"  concept names: {names}\n)"
        )

    @property
    def n_features(self) -> int:
        return int(self.head.weight.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.head.weight.shape[0])

    @property
    def selected_features(self) -> torch.Tensor:
        """The penultimate channel each feature is (or, with a linear mix, started from), in rank order."""
        return self.bottleneck.selected.clone()

    @property
    def assignment(self) -> torch.Tensor:
        """(C, n_features) int8 in {-1, 0, 1}: the sign of each class's weight on each feature."""
        return torch.sign(self.head.weight).to(torch.int8)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features of `images` (the backbone's own head still runs, unused)."""
        from retrofit.extraction.inputs import InputPolicy

        capture = FeatureCapture(self.backbone, self.spec)
        with capture.attached():
            self.backbone(InputPolicy.of(self.backbone)(images))
        return capture.features()

    def concept_activations(self, images: torch.Tensor) -> torch.Tensor:
        """The n_features standardised feature activations the head reads."""
        return self.bottleneck(self.backbone_features(images))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled penultimate features (N, D)."""
        return self.head(self.bottleneck(features))

    def forward(
        self,
        images: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        """Logits of `images`; called the transformers way (`pixel_values=`, optional `labels`),
        an ImageClassifierOutput with the cross-entropy loss (a tuple with return_dict=False).

        The transformers arguments are not keyword-only so that exporters which pass every
        default positionally (torch.onnx.export(..., dynamo=False), torch.jit.trace) can call
        it; `imodel(images)` with them left None is the plain logits call.
        """
        if pixel_values is None:
            if images is None or labels is not None or return_dict is not None:
                raise ConfigError(
                    "Call imodel(images) for logits, or imodel(pixel_values=..., labels=..., "
                    "return_dict=...) for a transformers ImageClassifierOutput."
                )
            return self.forward_features(self.backbone_features(images))
        if images is not None:
            raise ConfigError("Pass the images once: imodel(images) or imodel(pixel_values=...).")
        from retrofit.model.hf import classifier_output

        logits = self.forward_features(self.backbone_features(pixel_values))
        return classifier_output(logits, labels, return_dict)

    @property
    def hf_device_map(self) -> Any:
        """Absent unless set (accelerate's dispatch_model sets it), as on any nn.Module; but
        transformers' Pipeline reads it first, so a pipeline given this model (not its
        transformers view) fails here, at once, saying what to pass."""
        if "_hf_device_map" in self.__dict__:
            return self.__dict__["_hf_device_map"]
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("transformers.pipelines"):
            raise TransformersViewError(
                "transformers.pipeline needs a transformers PreTrainedModel: pass "
                "model=imodel.to_transformers() (with image_processor=..., e.g. "
                "retrofit.model.hf.image_processor(imodel) or the base model's own processor)."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute 'hf_device_map'")

    @hf_device_map.setter
    def hf_device_map(self, value: Any) -> None:
        self.__dict__["_hf_device_map"] = value

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the device its inputs should be on)."""
        return next(self.parameters(), self.head.weight).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the model's weights."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def to_transformers(self) -> Any:
        """This model as a transformers PreTrainedModel sharing its modules, with id2label from
        the class names: runs in pipeline("image-classification"); see retrofit.model.hf."""
        from retrofit.model.hf import as_hf_model

        return as_hf_model(self)

    def image_transform(self) -> Any:
        """The callable that turns a PIL image into this model's input tensor, from the recorded
        preprocessing of the base model (see retrofit.extraction.preprocessing)."""
        from retrofit.extraction.preprocessing import image_transform, preprocessing_of_model

        return image_transform(preprocessing_of_model(self), self.stats.get("input_size"))

    def feature_name(self, index: int) -> str:
        """The best concept name of feature `index`; "unexplained" when that name did not hold
        on held-out images (retrofit.concepts.evidence); a neutral id when it has none."""
        names = self.concepts[index]
        if names:
            return names[0]["concept"] if names[0].get("accepted", True) else "unexplained"
        kind = "feature" if self.bottleneck.attributes is None else "attribute"
        return f"{kind}_{int(self.bottleneck.selected[index])}"

    def pair_name(self, class_index: int, index: int) -> str:
        """Why class `class_index` uses feature `index`: its class-conditional name when one was
        computed, else the feature's global name."""
        pair = self.pair_concepts.get((int(class_index), int(index)))
        return pair["concept"] if pair else self.feature_name(index)

    def name_evidence(self, class_index: int, index: int) -> dict[str, Any] | None:
        """The held-out test behind the name `pair_name(class_index, index)` shows (held-out AUC
        or Spearman, p- and q-value, test images), or None when that name was not tested
        (a human's name, an older export, a neutral id)."""
        pair = self.pair_concepts.get((int(class_index), int(index)))
        if pair:
            return pair.get("evidence")
        names = self.concepts[index]
        return names[0].get("held_out") if names else None

    @property
    def naming_reliability(self) -> dict[str, Any] | None:
        """How sure the names are, as naming measured it (retrofit.concepts.evidence): the
        estimated precision, the vocabulary's share shown, the encoder's fit to the data."""
        concepts = (self.stats or {}).get("concepts") or {}
        return (concepts.get("naming") or {}).get("reliability")

    @torch.no_grad()
    def measure_relevance(self, features: torch.Tensor) -> torch.Tensor:
        """Set and return class_relevance, r_{j,c}, from pooled features (N, D) (FLINT)."""
        z = self.bottleneck.transform(features.to(self.head.weight.device))
        predicted = self.head(z).argmax(dim=1)
        self.class_relevance = class_relevance(z, self.head.weight, predicted, self.num_classes)
        return self.class_relevance

    def global_explanation(self, tau: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every class with the features it uses: position, backbone index, sign, weight, its
        class-conditional name (`name`) and the feature's global name (`feature_name`).

        When class_relevance is known each entry has its `relevance` r_{j,c}; with `tau` only
        the relevant ones (r > 1/tau) are listed, most relevant first. A method whose
        head reads every attribute (flint) sets its default tau in its traits (2 for flint).
        """
        table: dict[str, list[dict[str, Any]]] = {}
        weight = self.head.weight.detach().cpu()
        relevance = self.class_relevance
        if tau is None and relevance is not None:
            tau = method_traits(self.config.method).relevance_tau
        if tau is not None:
            check_tau(tau)
            if relevance is None:
                raise ConfigError(
                    "global_explanation(tau=...) needs the class relevance: call "
                    "imodel.measure_relevance(features) with pooled training features first."
                )
        for c, name in enumerate(self.class_names):
            row = weight[c]
            order = torch.argsort(row.abs(), descending=True, stable=True)
            if relevance is not None and tau is not None:
                order = torch.argsort(relevance[c], descending=True, stable=True)
                order = order[relevance[c][order] > 1 / tau]
            table[name] = [
                {
                    "feature": int(j),
                    "backbone_index": int(self.bottleneck.selected[j]),
                    "sign": int(torch.sign(row[j])),
                    "weight": float(row[j]),
                    "name": self.pair_name(c, int(j)),
                    "feature_name": self.feature_name(int(j)),
                    "pair": dict(self.pair_concepts.get((c, int(j)), {})),
                    **({"relevance": float(relevance[c, j])} if relevance is not None else {}),
                }
                for j in order.tolist()
                if row[j] != 0
            ]
        return table

    def format_global_explanation(self) -> str:
        """The global explanation as a plain-text table, one class per line; features whose
        pair naming abstained are counted at the end rather than listed as a word."""
        lines = []
        for name, features in self.global_explanation().items():
            named = [f for f in features if f["pair"].get("status") != "unexplained"]
            parts = [("+" if f["sign"] > 0 else "-") + f["name"] for f in named]
            if len(named) < len(features):
                count = len(features) - len(named)
                parts.append(f"{count} unexplained feature{'s' if count > 1 else ''}")
            lines.append(f"{name}: {', '.join(parts) if parts else '(no features)'}")
        return "\n".join(lines)

    def explain(
        self, images: torch.Tensor, intervene: dict[int | str, float] | None = None
    ) -> list[Explanation]:
        """One Explanation per image: prediction, its features' contributions, the runner-up;
        `intervene` sets features by hand ({position or name: activation})."""
        return explain(self, images, intervene)

    def edit(self, edits: Any, features: Any = None, **options: Any) -> Any:
        """Apply human edits and return a retrofit.editing.apply.EditResult; see retrofit.editing.apply.edit."""
        from retrofit.editing.apply import edit

        return edit(self, edits, features, **options)

    def save_pretrained(
        self,
        path: str | os.PathLike,
        include_backbone: bool = False,
        base_model: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write an export folder (model.safetensors, retrofit_config.json, README.md)."""
        return save(
            self,
            path,
            include_backbone=include_backbone,
            base_model=base_model,
            overwrite=overwrite,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        model: nn.Module | None = None,
        strict: bool = True,
        trust_remote_code: bool = False,
        revision: str | None = None,
        token: str | None = None,
    ) -> InterpretableModel:
        """Load an export folder, or a Hub repo id ("org/name"); see retrofit.export.read_export."""
        parts = read_export(
            resolve_export(path, revision=revision, token=token),
            model=model,
            strict=strict,
            trust_remote_code=trust_remote_code,
        )
        imodel = cls(
            parts.backbone,
            parts.layer,
            parts.bottleneck,
            parts.head,
            parts.config,
            class_names=parts.class_names,
            stats=parts.stats,
        )
        imodel.concepts = parts.concepts
        imodel.pair_concepts = parts.pair_concepts
        imodel.edits = parts.edits
        imodel.class_relevance = parts.class_relevance
        imodel.preprocessing = parts.preprocessing
        device = next((p.device for p in parts.backbone.parameters()), torch.device("cpu"))
        return imodel.to(device).eval()

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool = False,
        include_backbone: bool = False,
        base_model: str | None = None,
    ) -> Any:
        """Save to a temporary folder and upload it to the Hugging Face Hub."""
        return push_to_hub(self, repo_id, token, private, include_backbone, base_model)


def load(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    strict: bool = True,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> InterpretableModel:
    """Load an export folder or Hub repo id; its logits equal the saved model's.

    The backbone is `model` when given (its fingerprint must match, or with strict=False a
    warning is issued), else backbone.safetensors on the architecture of the base model spec
    when the export includes it, else the base model rebuilt from its spec. A spec that would
    run code or read files outside the export needs trust_remote_code=True (retrofit.io.trust).
    """
    return InterpretableModel.from_pretrained(
        path, model, strict, trust_remote_code, revision=revision, token=token
    )
