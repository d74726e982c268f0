"""Tiny Stable Diffusion pipelines with random weights, built from configs (nothing downloaded).

For tests, notebooks and examples of :class:`odediff.diffusers.ODEScheduler` in the pipelines Stable
Diffusion users run: 32×32 images, 4-channel 8×8 latents, a two-layer CLIP text encoder with a
byte-level tokenizer (every byte one token, no merges). The weights are random (fixed seeds), so
the images mean nothing; the pipelines' code paths are the real ones. Needs ``diffusers`` and
``transformers``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SD_SCHEDULER", "pipeline", "tokenizer"]

# Stable Diffusion 1.x's scheduler config (its DDIM/PNDM settings)
SD_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    timestep_spacing="leading", steps_offset=1, clip_sample=False, set_alpha_to_one=False,
)  # fmt: skip
_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
_MAX_TOKENS = 32


def tokenizer() -> Any:
    """A CLIP tokenizer over single bytes (GPT-2's byte-to-character map, no merges)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_MAX_TOKENS)


def _text_encoder(seed: int, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer()), max_position_embeddings=_MAX_TOKENS, projection_dim=32,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, **_TEXT,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed: int) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=32,
    ).eval()  # fmt: skip


def _unet(seed: int, in_channels: int, xl: bool) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = (
        dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
        )
        if xl
        else {}
    )  # SDXL: pooled text (32) + six size/crop numbers × 8
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64 if xl else 32, **extra,
    ).eval()  # fmt: skip


def pipeline(kind: str = "text2img", scheduler: Any = None, seed: int = 0) -> Any:
    """A tiny pipeline: ``kind`` is ``"text2img"``, ``"img2img"``, ``"inpaint"`` (a 9-channel
    inpainting UNet), ``"xl"`` (SDXL base) or ``"xl-img2img"`` (an SDXL refiner sharing the base's
    weights). ``scheduler`` defaults to DDIMScheduler with Stable Diffusion's config. Same seed,
    same weights, whatever the kind (the inpainting UNet aside)."""
    import diffusers

    if scheduler is None:
        scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER)
    kinds = {
        "text2img": diffusers.StableDiffusionPipeline,
        "img2img": diffusers.StableDiffusionImg2ImgPipeline,
        "inpaint": diffusers.StableDiffusionInpaintPipeline,
        "xl": diffusers.StableDiffusionXLPipeline,
        "xl-img2img": diffusers.StableDiffusionXLImg2ImgPipeline,
    }
    if kind not in kinds:
        raise ValueError(f"kind: expected one of {sorted(kinds)}, got {kind!r}")
    parts: dict[str, Any] = dict(vae=_vae(seed), tokenizer=tokenizer(), scheduler=scheduler)
    if kind.startswith("xl"):
        parts.update(
            unet=_unet(seed, 4, xl=True), text_encoder=_text_encoder(seed + 1),
            text_encoder_2=_text_encoder(seed + 2, projection=True), tokenizer_2=tokenizer(),
        )  # fmt: skip
        if kind == "xl-img2img":
            parts["requires_aesthetics_score"] = False
    else:
        parts.update(
            unet=_unet(seed, 9 if kind == "inpaint" else 4, xl=False), text_encoder=_text_encoder(seed + 1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe = kinds[kind](**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
