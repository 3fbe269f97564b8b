"""Concept encoders: the shipped tiny CLIP (open_clip), a local HF CLIP, preprocessing, caches."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from retrofit.concepts import (
    HFCLIPEncoder,
    OpenCLIPEncoder,
    Preprocess,
    curated_concepts,
    embed_concepts,
    embed_images,
    load_encoder,
    load_tiny_clip,
    score_matrix,
    tiny_clip_settings,
)
from retrofit.concepts.naming import DEFAULT_METHOD
from retrofit.concepts.scoring import auc_scores
from retrofit.concepts.vocabulary import DUPLICATE_SIMILARITY
from retrofit.datasets import SyntheticConceptDataset
from retrofit.errors import ConfigError, DataError, ModelError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tiny() -> OpenCLIPEncoder:
    return load_tiny_clip()


@pytest.fixture(scope="module")
def world() -> tuple[torch.Tensor, SyntheticConceptDataset]:
    """Test-split images: the tiny CLIP trained on the val split."""
    data = SyntheticConceptDataset(256, n_classes=50, image_size=64, seed=0, split="test")
    return torch.stack([data[i][0] for i in range(len(data))]), data


def _hf_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges) built from open_clip's byte alphabet."""
    chars = list(open_clip.tokenizer.bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised small CLIPModel + tokenizer + image processor saved to disk."""
    tokenizer = _hf_tokenizer()
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf_clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(path)
    return str(path)


def test_tiny_clip_embeds_images_and_texts_normalised(tiny, world) -> None:
    images, _ = world
    img = tiny.encode_images(images[:8])
    txt = tiny.encode_texts(["red", "a photo of circle"])
    assert img.shape == (8, 64) and txt.shape == (2, 64)
    assert torch.allclose(img.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-5)
    assert tiny.spec == "open_clip:tiny"
    assert load_encoder("tiny").fingerprint == tiny.fingerprint


def test_tiny_clip_recognises_the_worlds_concepts(tiny, world) -> None:
    """Zero-shot: every concept's prompt separates the images that show it, and no two
    concepts' prompts are so alike that the near-duplicate filter would merge them."""
    images, data = world
    names = data.concept_names
    text = embed_concepts(tiny, names)
    auc = auc_scores(tiny.encode_images(images) @ text.T, data.concepts).diagonal()
    assert (auc > 0.75).all(), dict(zip(names, auc.tolist()))
    assert auc.mean() > 0.9
    similar = text @ text.T - 2 * torch.eye(len(names))
    assert similar.max() < DUPLICATE_SIMILARITY
    settings = tiny_clip_settings()
    assert settings["metrics"]["worst_world_concept_auc_min"] > 0.75
    assert settings["weights"]["bytes"] < 10_000_000


def test_tiny_clip_names_a_feature_after_the_concept_it_tracks(tiny, world) -> None:
    """A feature that is one concept's presence plus noise gets that concept's name among the
    curated vocabulary, with the default scoring method."""
    images, data = world
    vocabulary = curated_concepts()
    similarity = tiny.encode_images(images) @ embed_concepts(tiny, vocabulary).T
    noise = torch.randn(data.concepts.shape, generator=torch.Generator().manual_seed(0))
    features = data.concepts.float() + 0.5 * noise
    named = score_matrix(DEFAULT_METHOD, features, similarity).argmax(dim=1)
    wrong = {
        c: vocabulary[int(v)] for c, v in zip(data.concept_names, named) if vocabulary[int(v)] != c
    }
    assert len(wrong) <= 2, wrong


def test_images_are_renormalised_from_the_stated_input_normalisation(tiny, world) -> None:
    images, _ = world
    raw = tiny.encode_images(images[:4])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (images[:4] - mean) / std
    again = tiny.encode_images(normalised, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    assert torch.allclose(raw, again, atol=1e-4)
    with pytest.raises(DataError, match="input_mean"):
        tiny.encode_images(normalised)
    small = torch.nn.functional.interpolate(images[:2], size=(40, 48), mode="bilinear")
    assert tiny.encode_images(small).shape == (2, 64)  # resized and centre-cropped to 64


def test_preprocess_validates_its_settings() -> None:
    with pytest.raises(ConfigError):
        Preprocess(0)
    with pytest.raises(ConfigError):
        Preprocess(32, std=(0.0, 1.0, 1.0))
    out = Preprocess(16, (0.5,) * 3, (0.5,) * 3, "bilinear")(torch.rand(2, 3, 32, 24))
    assert out.shape == (2, 3, 16, 16)


def test_hf_clip_loads_from_a_local_folder(hf_dir, world) -> None:
    images, _ = world
    encoder = HFCLIPEncoder(hf_dir, local_files_only=True)
    assert encoder.preprocess.image_size == 32 and encoder.preprocess.mean == (0.5, 0.5, 0.5)
    img = encoder.encode_images(images[:3])
    txt = encoder.encode_texts(["red", "grass background", "a"])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    assert torch.allclose(txt.norm(dim=1), torch.ones(3), atol=1e-5)
    spec = load_encoder(f"hf:{hf_dir}")
    assert spec.fingerprint == encoder.fingerprint
    assert torch.allclose(spec.encode_texts(["red"]), txt[:1], atol=1e-6)


def test_open_clip_named_model_with_a_local_safetensors_checkpoint(tmp_path, tiny) -> None:
    """A model config registered with open_clip plus a local checkpoint (the offline path)."""
    settings = tiny_clip_settings()
    config = {**settings["model"]}
    (tmp_path / "retrofit-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "retrofit-test-tiny.json")
    checkpoint = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(checkpoint))
    encoder = load_encoder(f"open_clip:retrofit-test-tiny:{checkpoint}")
    assert encoder.spec == f"open_clip:retrofit-test-tiny:{checkpoint}"
    encoder.preprocess = tiny.preprocess
    assert torch.allclose(encoder.encode_texts(["red"]), tiny.encode_texts(["red"]), atol=1e-5)


def test_encoders_that_cannot_load_say_how_to_pass_a_local_checkpoint(tmp_path) -> None:
    with pytest.raises(ModelError, match="save_pretrained"):
        HFCLIPEncoder(str(tmp_path / "missing"), local_files_only=True)
    with pytest.raises(ModelError, match="checkpoint="):
        OpenCLIPEncoder("no-such-open-clip-model")
    pickle = tmp_path / "model.bin"
    pickle.write_bytes(b"not read")
    with pytest.raises(ModelError, match="safetensors"):
        OpenCLIPEncoder("ViT-B-32", checkpoint=pickle)
    with pytest.raises(ConfigError, match="Unknown encoder spec"):
        load_encoder("clip-from-nowhere")


def test_embeddings_are_cached_by_fingerprint(tmp_path, tiny, world, monkeypatch) -> None:
    images, _ = world
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images[:16], torch.arange(16)), batch_size=8
    )
    first, labels = embed_images(tiny, loader, cache_dir=tmp_path, progress=False)
    texts = embed_concepts(tiny, ["red", "star"], ("{}", "a photo of {}"), cache_dir=tmp_path)
    assert len(list((tmp_path / "concept_images").glob("*.safetensors"))) == 2
    assert torch.equal(labels, torch.arange(16))

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tiny, "encode_images", fail)
    monkeypatch.setattr(tiny, "encode_texts", fail)
    again, _ = embed_images(tiny, loader, cache_dir=tmp_path, progress=False)
    assert torch.equal(first, again)
    assert torch.equal(
        texts, embed_concepts(tiny, ["red", "star"], ("{}", "a photo of {}"), cache_dir=tmp_path)
    )
    with pytest.raises(AssertionError, match="cache"):  # other pixels: not reused
        embed_images(tiny, images[16:24], cache_dir=tmp_path, progress=False)


def test_prompt_templates_are_averaged(tiny) -> None:
    templates = ("{}", "a photo of {}")
    averaged = embed_concepts(tiny, ["pink"], templates)
    parts = tiny.encode_texts([t.format("pink") for t in templates])
    expected = torch.nn.functional.normalize(parts.mean(dim=0, keepdim=True), dim=1)
    assert torch.allclose(averaged, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="exactly once"):
        embed_concepts(tiny, ["pink"], ("no placeholder",))
