"""The policy: a flow-matching text-to-image pipeline whose transformer carries a LoRA adapter.

Implemented:
- `build_tiny_flux_pipeline`: the embedded default as a real diffusers `FluxPipeline`, assembled from small configs
  with random weights: `FluxTransformer2DModel` (1 double + 2 single blocks, 4 heads x 32 by default), tiny frozen
  `CLIPTextModel` and `T5EncoderModel` over the offline SpatialWorld word-level tokenizer (data_synthesis'), and
  `PixelUnshuffleAutoencoder` in place of the VAE: an exact invertible pixel-unshuffle, so the latent space needs no
  training (32 px RGB -> 12 x 16 x 16 latents -> FluxPipeline's 2 x 2 packing -> 64 tokens of 48). It saves and
  reloads with `save_pretrained` / `load_pipeline` like any diffusers directory, and `FluxPipeline.__call__` samples
  from it (the autoencoder's config carries the `block_out_channels` FluxPipeline reads its scale factor from).
- `load_pipeline`: FLUX.1-dev (or any `FluxPipeline` directory, the tiny one included) or Qwen-Image from a local
  diffusers directory, with one clear error naming what is missing when the directory is not one. (Qwen-Image has
  no embedded default; the tests assemble a tiny QwenImagePipeline from small configs.)
- `add_lora` (peft, through diffusers' `add_adapter`; rank, alpha and target modules are arguments, the base
  frozen) and `reference_policy`: the same network with the adapter disabled, no second copy.
- `FluxPolicy` and `QwenImagePolicy` (built by `build_policy`, which freezes everything but the LoRA), with the same
  methods: prompt embeddings cached per prompt string, the velocity of the transformer (with FLUX.1-dev's guidance
  embedding and/or true classifier-free guidance), the pipeline's sigma schedule at the image's token count, and
  latents <-> images.

Throughput switches (all off by default, which keeps the computation exactly as it was): `forward_batch_size` caps
the samples per transformer call (None: the whole batch, e.g. every sample of a group, in one forward; a cap
splits it where memory does not allow), `grad_attention` / `no_grad_attention` pick the SDPA backend of the passes
with and without gradients (`attention_backend`: sampling and the reference forward may use one whose backward is
unusable, e.g. cuDNN's, which failed in the backward on an H100 with torch 2.11), and
`compile_transformer_blocks` compiles each transformer block on its own (regional torch.compile: one graph per block
class, reused by every block of it, compiled in seconds instead of the whole model's minutes).

The GRPO sampler calls the transformer through `velocity` step by step (it needs every step's log-prob, which the
pipelines' `__call__` cannot give); the pipeline object is kept for its prompt encoding, packing, saving and LoRA
loading. Prompts longer than the text encoders' limit: an error when `strict_prompt_length` (the embedded default,
where the oracle would score relations the model never saw), else diffusers truncates and `truncated_prompts` counts
it (with a warning).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    ModelMixin,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.pipelines.flux.pipeline_flux_img2img import retrieve_latents
from diffusers.utils import BaseOutput
from peft import LoraConfig
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase, T5Config, T5EncoderModel

from data_synthesis import build_spatialworld_tokenizer
from rl_policy.sde import flux_shift_mu, flux_sigmas
from shared.pipelines import load_pipeline_dir, read_pipeline_index

logger = logging.getLogger(__name__)

# The attention projections of Flux's double blocks (image and text streams) and single blocks; Qwen-Image's blocks
# use the same names. Single blocks also have proj_mlp / proj_out, double blocks ff.net.* (add them for more capacity).
FLUX_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
SUPPORTED_PIPELINES = ("FluxPipeline", "QwenImagePipeline")
# FLUX.1-dev's scheduler_config.json (dynamic shifting: mu from the image token count, rl_policy.sde.flux_shift_mu).
FLUX_SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


@dataclass
class EncoderOutput(BaseOutput):
    latents: torch.Tensor  # [B, C * f^2, H / f, W / f]


class PixelUnshuffleAutoencoder(ModelMixin, ConfigMixin):
    """An exact, parameter-free stand-in for a VAE: images [B, C, H, W] in [-1, 1] <-> latents
    [B, C * f^2, H / f, W / f] by pixel-unshuffle / pixel-shuffle with f = 2 ** (len(block_out_channels) - 1).

    Only the length of `block_out_channels` matters: it is the field FluxPipeline computes `vae_scale_factor` from,
    as for `AutoencoderKL`. `encode` returns `.latents` (what diffusers' `retrieve_latents` reads), `decode`
    returns `DecoderOutput`; scaling_factor / shift_factor are applied by the pipeline, as for a real VAE.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        block_out_channels: tuple[int, ...] = (3, 3),
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        super().__init__()
        self.downscale_factor = 2 ** (len(block_out_channels) - 1)
        # No weights, but pipelines ask a component for its device and dtype, and diffusers' loader needs a weights
        # file: one saved scalar serves both.
        self.register_buffer("device_anchor", torch.zeros(()))

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.downscale_factor**2

    def encode(self, images: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        latents = F.pixel_unshuffle(images, self.downscale_factor)
        return EncoderOutput(latents=latents) if return_dict else (latents,)

    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        images = F.pixel_shuffle(latents, self.downscale_factor)
        return DecoderOutput(sample=images) if return_dict else (images,)


def spatialworld_text_tokenizer(max_tokens: int) -> PreTrainedTokenizerBase:
    """The offline SpatialWorld word-level tokenizer (the one the tiny reward backbone reads), limited to
    `max_tokens` + 1 tokens: the pad token after the last word is where the tiny CLIP pools (its eos_token_id is
    the pad id), so a prompt of `max_tokens` tokens still has one."""
    tokenizer = build_spatialworld_tokenizer()
    tokenizer.model_max_length = max_tokens + 1
    return tokenizer


def build_tiny_flux_pipeline(
    *,
    num_layers: int = 1,
    num_single_layers: int = 2,
    num_attention_heads: int = 4,
    attention_head_dim: int = 32,
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12),
    text_width: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    max_prompt_tokens: int = 96,
    downsampling_steps: int = 1,
    guidance_embeds: bool = False,
    seed: int = 0,
) -> FluxPipeline:
    """The embedded default: a real FluxPipeline with random weights from small configs (module docstring).

    axes_dims_rope must sum to attention_head_dim; downsampling_steps = log2 of the pixel-unshuffle factor (1: 2 x 2
    pixels per latent position, 12 latent channels, 48 per packed token). The default transformer has 1.2M
    parameters; the text encoders are frozen and random, the transformer's projections learn to read them.
    """
    if sum(axes_dims_rope) != attention_head_dim:
        raise ValueError(f"axes_dims_rope {axes_dims_rope} must sum to attention_head_dim {attention_head_dim}")
    tokenizer = spatialworld_text_tokenizer(max_prompt_tokens)
    pad_id = tokenizer.pad_token_id
    autoencoder = PixelUnshuffleAutoencoder(block_out_channels=(3,) * (downsampling_steps + 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_width,
                intermediate_size=4 * text_width,
                num_hidden_layers=text_layers,
                num_attention_heads=text_heads,
                max_position_embeddings=tokenizer.model_max_length,
                projection_dim=text_width,
                pad_token_id=pad_id,
                bos_token_id=pad_id,
                eos_token_id=pad_id,
            )
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=text_width,
                d_kv=text_width // text_heads,
                d_ff=4 * text_width,
                num_layers=text_layers,
                num_heads=text_heads,
                pad_token_id=pad_id,
                eos_token_id=pad_id,
                decoder_start_token_id=pad_id,
            )
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * autoencoder.latent_channels,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=text_width,
            pooled_projection_dim=text_width,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=axes_dims_rope,
        )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=autoencoder,
        text_encoder=clip.eval(),
        tokenizer=tokenizer,
        text_encoder_2=t5.eval(),
        tokenizer_2=spatialworld_text_tokenizer(max_prompt_tokens),
        transformer=transformer,
    )


def load_pipeline(path: str | Path, torch_dtype: torch.dtype | None = None) -> DiffusionPipeline:
    """A FluxPipeline (FLUX.1-dev, or one saved by `save_pretrained`, the tiny one included) or QwenImagePipeline
    from a local diffusers directory; a ValueError / FileNotFoundError naming the missing piece otherwise."""
    path = Path(path)
    class_name = read_pipeline_index(path)["_class_name"]  # FileNotFoundError naming what is missing
    if class_name not in SUPPORTED_PIPELINES:
        index_file = path / "model_index.json"
        raise ValueError(f"{index_file}: _class_name {class_name!r} is not one of {', '.join(SUPPORTED_PIPELINES)}")
    return load_pipeline_dir(path, dtype=torch_dtype)


def add_lora(
    transformer: ModelMixin,
    rank: int = 32,
    alpha: float | None = None,
    target_modules: Sequence[str] = FLUX_LORA_TARGETS,
    dropout: float = 0.0,
) -> None:
    """Freeze the transformer and add a LoRA adapter (peft) to the modules whose names end with a target; alpha
    defaults to rank (scale 1). B starts at zero, so the adapted network starts equal to the base."""
    names = [name for name, _ in transformer.named_modules()]
    unmatched = [target for target in target_modules if not any(n == target or n.endswith("." + target) for n in names)]
    if unmatched:
        kind = type(transformer).__name__
        raise ValueError(f"LoRA target module(s) {', '.join(unmatched)} match no module of {kind}")
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        init_lora_weights=True,
    )
    transformer.add_adapter(config)


ATTENTION_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def check_attention_backend(name: str | None, field_name: str = "attention backend") -> None:
    if name is not None and name not in ATTENTION_BACKENDS:
        raise ValueError(f"{field_name} must be None or one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")


def attention_backend(name: str | None) -> contextlib.AbstractContextManager:
    """Within the block, scaled_dot_product_attention (diffusers' native attention) runs only with the named SDPA
    backend (one of `ATTENTION_BACKENDS`); None: PyTorch's own choice, nothing changed."""
    check_attention_backend(name)
    return contextlib.nullcontext() if name is None else sdpa_kernel([ATTENTION_BACKENDS[name]])


def transformer_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Flux (double and single) or Qwen-Image transformer."""
    blocks = [*getattr(transformer, "transformer_blocks", []), *getattr(transformer, "single_transformer_blocks", [])]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no transformer_blocks to compile")
    return blocks


def compile_transformer_blocks(transformer: torch.nn.Module, **options) -> int:
    """Regional torch.compile: each block's forward compiled in place (`nn.Module.compile`, `options` to
    torch.compile), the rest of the model eager; blocks of one class share their graphs. The LoRA adapter stays
    trainable and `reference_policy` still switches it off (a second graph per block class). -> blocks compiled."""
    blocks = transformer_blocks(transformer)
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def _rows(embeddings: PromptEmbeddings | None, rows: slice) -> PromptEmbeddings | None:
    return None if embeddings is None else PromptEmbeddings(*(None if f is None else f[rows] for f in embeddings))


def _switched_velocity(policy: FluxPolicy | QwenImagePolicy, velocity, latents, sigma, prompt, negative, **kwargs):
    """`velocity(latents, sigma, prompt, negative=..., **kwargs)` under the policy's attention backend for this
    pass (with or without gradients) and in chunks of at most `forward_batch_size` samples."""
    backend = policy.grad_attention if torch.is_grad_enabled() else policy.no_grad_attention
    size = policy.forward_batch_size
    with attention_backend(backend):
        if size is None or latents.shape[0] <= size:
            return velocity(latents, sigma, prompt, negative=negative, **kwargs)
        parts = []
        for start in range(0, latents.shape[0], size):
            rows = slice(start, start + size)
            parts.append(
                velocity(latents[rows], sigma[rows], _rows(prompt, rows), negative=_rows(negative, rows), **kwargs)
            )
        return torch.cat(parts)


def _check_switches(policy: FluxPolicy | QwenImagePolicy) -> None:
    if policy.forward_batch_size is not None and policy.forward_batch_size < 1:
        raise ValueError(f"forward_batch_size must be None or positive, got {policy.forward_batch_size}")
    check_attention_backend(policy.grad_attention, "grad_attention")
    check_attention_backend(policy.no_grad_attention, "no_grad_attention")


@contextlib.contextmanager
def reference_policy(transformer: ModelMixin) -> Iterator[None]:
    """Within the block the transformer is the reference policy: the base network, LoRA adapter disabled."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


class PromptEmbeddings(NamedTuple):
    prompt_embeds: torch.Tensor  # [B, T, joint_attention_dim] Flux: T5 states; Qwen-Image: Qwen2.5-VL last states
    pooled: torch.Tensor | None  # [B, pooled_projection_dim] Flux: CLIP pooled output; Qwen-Image: None
    mask: torch.Tensor | None  # [B, T] long, 1 = token, 0 = padding; None when all are tokens (Flux: always)


@dataclass
class FluxPolicy:
    """A FluxPipeline whose transformer is the trained policy (LoRA) and, adapter disabled, the reference.

    Latents are Flux's packed tokens [B, (H / 2f) * (W / 2f), 4 * latent channels]; images [B, 3, H, W] in [0, 1].
    """

    pipeline: FluxPipeline
    max_sequence_length: int = 512
    strict_prompt_length: bool = False
    truncated_prompts: int = 0
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    forward_batch_size: int | None = None  # samples per transformer call (None: the whole batch at once)
    grad_attention: str | None = None  # SDPA backend of passes with gradients (None: PyTorch's choice)
    no_grad_attention: str | None = None  # ... and without (sampling, the reference forward)

    def __post_init__(self) -> None:
        _check_switches(self)

    @property
    def transformer(self) -> FluxTransformer2DModel:
        return self.pipeline.transformer

    def prompt_overflow(self, prompt: str) -> tuple[int, int] | None:
        """(tokens, limit) of the first text encoder whose limit `prompt` exceeds, or None when it fits both."""
        limits = [(self.pipeline.tokenizer, self.pipeline.tokenizer_max_length)]
        limits.append((self.pipeline.tokenizer_2, self.max_sequence_length))
        for tokenizer, limit in limits:
            length = len(tokenizer(prompt).input_ids)
            if length > limit:
                return length, limit
        return None

    def _check_length(self, prompts: Sequence[str]) -> None:
        """Raise (strict) or count and warn, once per prompt, when a prompt exceeds either text encoder's limit."""
        for prompt in prompts:
            over = self.prompt_overflow(prompt)
            if over is None:
                continue
            length, limit = over
            if self.strict_prompt_length:
                raise ValueError(f"prompt has {length} tokens, over the text encoder's limit {limit}: {prompt!r}")
            self.truncated_prompts += 1
            logger.warning(
                "prompt of %d tokens truncated to %d (%d prompts so far)", length, limit, self.truncated_prompts
            )

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Text embeddings of `prompts` (B of them), each prompt string encoded once and cached."""
        new = list(dict.fromkeys(prompt for prompt in prompts if prompt not in self._cache))
        if new:
            self._check_length(new)
            embeds, pooled, _ = self.pipeline.encode_prompt(
                prompt=new, prompt_2=None, device=self.transformer.device, max_sequence_length=self.max_sequence_length
            )
            for index, prompt in enumerate(new):
                self._cache[prompt] = (embeds[index], pooled[index])
        embeds = torch.stack([self._cache[prompt][0] for prompt in prompts])
        pooled = torch.stack([self._cache[prompt][1] for prompt in prompts])
        return PromptEmbeddings(embeds, pooled, None)

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (rows, columns) of a height x width image: FluxPipeline's pixel size per token is 2f."""
        step = 2 * self.pipeline.vae_scale_factor
        if height % step or width % step:
            raise ValueError(f"image size {height} x {width} must be divisible by {step} for this pipeline")
        return height // step, width // step

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The pipeline's sigma schedule [num_steps + 1] (shift from the image token count, rl_policy.sde)."""
        config = self.pipeline.scheduler.config
        rows, columns = self.latent_grid(height, width)
        mu = flux_shift_mu(
            rows * columns,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return flux_sigmas(num_steps, mu)

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        prompt: PromptEmbeddings,
        height: int,
        width: int,
        guidance: float | None = None,
        negative: PromptEmbeddings | None = None,
        true_cfg_scale: float = 1.0,
    ) -> torch.Tensor:
        """The predicted velocity [B, N, C] at latents [B, N, C] and sigma [B]: one transformer forward.

        guidance: FLUX.1-dev's distilled guidance (its embedding; required exactly when the transformer has one).
        negative: embeddings of the negative prompt, for true classifier-free guidance
        v = v_neg + true_cfg_scale * (v - v_neg); both halves run as one batch of 2B (of 2 * forward_batch_size at
        most when that caps the samples per call).
        """
        return _switched_velocity(
            self, self._velocity, latents, sigma, prompt, negative, height=height, width=width, guidance=guidance,
            true_cfg_scale=true_cfg_scale,
        )  # fmt: skip

    def _velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        prompt: PromptEmbeddings,
        *,
        negative: PromptEmbeddings | None,
        height: int,
        width: int,
        guidance: float | None,
        true_cfg_scale: float,
    ) -> torch.Tensor:
        has_guidance_embedding = self.transformer.config.guidance_embeds
        if has_guidance_embedding != (guidance is not None):
            raise ValueError(f"guidance must be {'given' if has_guidance_embedding else 'None'} for this transformer")
        batch = latents.shape[0]
        if negative is not None:
            latents, sigma = torch.cat([latents, latents]), torch.cat([sigma, sigma])
            prompt = PromptEmbeddings(
                torch.cat([prompt.prompt_embeds, negative.prompt_embeds]),
                torch.cat([prompt.pooled, negative.pooled]),
                None,
            )
        rows, columns = self.latent_grid(height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(None, rows, columns, latents.device, latents.dtype)
        text_ids = torch.zeros(prompt.prompt_embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance_tensor = None if guidance is None else torch.full_like(sigma, guidance, dtype=torch.float32)
        velocity = self.transformer(
            hidden_states=latents,
            timestep=sigma.to(latents.dtype),  # FluxPipeline passes t / 1000 = sigma
            guidance=guidance_tensor,
            pooled_projections=prompt.pooled,
            encoder_hidden_states=prompt.prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        if negative is None:
            return velocity
        conditional, unconditional = velocity[:batch], velocity[batch:]
        return unconditional + true_cfg_scale * (conditional - unconditional)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents [B, N, C] -> images [B, 3, H, W] in [0, 1], as FluxPipeline decodes them."""
        vae = self.pipeline.vae
        latents = FluxPipeline._unpack_latents(latents, height, width, self.pipeline.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> packed latents [B, N, C] (the VAE's mode; exact for the pixel
        autoencoder), the inverse of `decode` up to the VAE's error and the clamp."""
        vae = self.pipeline.vae
        latents = retrieve_latents(vae.encode(images.to(vae.dtype) * 2 - 1), sample_mode="argmax")
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        batch, channels, rows, columns = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, rows, columns)


@dataclass
class QwenImagePolicy:
    """A QwenImagePipeline whose transformer is the trained policy (LoRA) and, adapter disabled, the reference; the
    same methods as `FluxPolicy`. Prompt embeddings have one length per prompt (padding masked), no pooled vector;
    true classifier-free guidance as QwenImagePipeline does it (two forwards, the guided velocity rescaled to the
    conditional one's norm per token); no guidance embedding."""

    pipeline: QwenImagePipeline
    max_sequence_length: int = 1024
    strict_prompt_length: bool = False
    truncated_prompts: int = 0
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    forward_batch_size: int | None = None  # as FluxPolicy's
    grad_attention: str | None = None
    no_grad_attention: str | None = None

    def __post_init__(self) -> None:
        _check_switches(self)

    @property
    def transformer(self) -> QwenImageTransformer2DModel:
        return self.pipeline.transformer

    def _check_length(self, prompts: Sequence[str]) -> None:
        """Raise (strict) or count and warn when a prompt exceeds max_sequence_length (template excluded)."""
        template = self.pipeline.prompt_template_encode
        for prompt in prompts:
            length = len(self.pipeline.tokenizer(template.format(prompt)).input_ids)
            length -= self.pipeline.prompt_template_encode_start_idx
            if length <= self.max_sequence_length:
                continue
            if self.strict_prompt_length:
                limit = self.max_sequence_length
                raise ValueError(f"prompt has {length} tokens, over the text encoder's limit {limit}: {prompt!r}")
            self.truncated_prompts += 1
            logger.warning("prompt of %d tokens truncated (%d so far)", length, self.truncated_prompts)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Text embeddings of `prompts` (B of them) padded to the longest, each prompt string encoded once."""
        new = list(dict.fromkeys(prompt for prompt in prompts if prompt not in self._cache))
        if new:
            self._check_length(new)
            embeds, mask = self.pipeline.encode_prompt(
                prompt=new, device=self.transformer.device, max_sequence_length=self.max_sequence_length
            )
            lengths = [embeds.shape[1]] * len(new) if mask is None else mask.sum(dim=1).tolist()
            for index, prompt in enumerate(new):
                self._cache[prompt] = embeds[index, : lengths[index]]
        rows = [self._cache[prompt] for prompt in prompts]
        longest = max(row.shape[0] for row in rows)
        embeds = torch.stack([F.pad(row, (0, 0, 0, longest - row.shape[0])) for row in rows])
        mask = torch.stack([(torch.arange(longest) < row.shape[0]).long() for row in rows]).to(embeds.device)
        return PromptEmbeddings(embeds, None, None if mask.all() else mask)

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (rows, columns) of a height x width image: the pixel size per token is 2 x the VAE's factor."""
        step = 2 * self.pipeline.vae_scale_factor
        if height % step or width % step:
            raise ValueError(f"image size {height} x {width} must be divisible by {step} for this pipeline")
        return height // step, width // step

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The pipeline's sigma schedule [num_steps + 1], from a copy of its scheduler set up as QwenImagePipeline
        does (its config may stretch the schedule to a terminal sigma, which `flux_sigmas` does not model)."""
        config = self.pipeline.scheduler.config
        rows, columns = self.latent_grid(height, width)
        mu = flux_shift_mu(
            rows * columns,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        scheduler = type(self.pipeline.scheduler).from_config(config)
        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1.0 / num_steps, num_steps).tolist(), mu=mu)
        return scheduler.sigmas.float()

    def _forward(self, latents: torch.Tensor, sigma: torch.Tensor, prompt: PromptEmbeddings, grid: tuple[int, int]):
        return self.transformer(
            hidden_states=latents,
            timestep=sigma.to(latents.dtype),
            guidance=None,
            encoder_hidden_states_mask=prompt.mask,
            encoder_hidden_states=prompt.prompt_embeds,
            img_shapes=[[(1, *grid)]] * latents.shape[0],
            return_dict=False,
        )[0]

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        prompt: PromptEmbeddings,
        height: int,
        width: int,
        guidance: float | None = None,
        negative: PromptEmbeddings | None = None,
        true_cfg_scale: float = 1.0,
    ) -> torch.Tensor:
        """The predicted velocity [B, N, C] at latents [B, N, C] and sigma [B] (FluxPolicy.velocity's arguments;
        guidance must be None: Qwen-Image has no guidance embedding)."""
        if guidance is not None:
            raise ValueError("guidance must be None for Qwen-Image (no guidance embedding); use true_cfg_scale")
        grid = self.latent_grid(height, width)
        return _switched_velocity(
            self, self._velocity, latents, sigma, prompt, negative, grid=grid, true_cfg_scale=true_cfg_scale
        )

    def _velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        prompt: PromptEmbeddings,
        *,
        negative: PromptEmbeddings | None,
        grid: tuple[int, int],
        true_cfg_scale: float,
    ) -> torch.Tensor:
        velocity = self._forward(latents, sigma, prompt, grid)
        if negative is None:
            return velocity
        unconditional = self._forward(latents, sigma, negative, grid)
        guided = unconditional + true_cfg_scale * (velocity - unconditional)
        return guided * (velocity.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents [B, N, C] -> images [B, 3, H, W] in [0, 1], as QwenImagePipeline decodes them."""
        vae = self.pipeline.vae
        latents = QwenImagePipeline._unpack_latents(latents, height, width, self.pipeline.vae_scale_factor)
        latents = latents.to(vae.dtype)
        mean, std = self._latent_statistics(latents)
        images = vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> packed latents [B, N, C] (the VAE's mode)."""
        vae = self.pipeline.vae
        latents = retrieve_latents(vae.encode(images.to(vae.dtype)[:, :, None] * 2 - 1), sample_mode="argmax")
        mean, std = self._latent_statistics(latents)
        latents = (latents - mean) / std  # [B, z, 1, h, w]
        batch, channels, _, rows, columns = latents.shape
        return QwenImagePipeline._pack_latents(latents, batch, channels, rows, columns)


Policy = FluxPolicy | QwenImagePolicy


def frozen_components(pipeline: DiffusionPipeline) -> list[torch.nn.Module]:
    """The pipeline's modules other than the transformer (text encoders, autoencoder): frozen in every stage, and
    placed on the transformer's device by hand, since Lightning moves only a module's own submodules."""
    return [
        component
        for name, component in pipeline.components.items()
        if isinstance(component, torch.nn.Module) and name != "transformer"
    ]


def build_policy(
    pipeline: FluxPipeline | QwenImagePipeline,
    *,
    lora_rank: int = 32,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = FLUX_LORA_TARGETS,
    max_sequence_length: int | None = None,
    strict_prompt_length: bool = False,
    forward_batch_size: int | None = None,
    grad_attention: str | None = None,
    no_grad_attention: str | None = None,
    compile_blocks: bool = False,
) -> Policy:
    """Freeze the pipeline (text encoders, autoencoder, transformer base), add the LoRA adapter to its transformer
    and wrap it as a `FluxPolicy` or `QwenImagePolicy`. Only the LoRA weights are trainable afterwards.

    max_sequence_length: text tokens. Flux pads every prompt to it and attends to all of them (it sets the cost of
    each step); default the second tokenizer's model_max_length, at most FluxPipeline's 512 (FLUX.1-dev: 512).
    Qwen-Image: default its pipeline's 1024.
    forward_batch_size, grad_attention, no_grad_attention: the policy's throughput switches (module docstring);
    compile_blocks: `compile_transformer_blocks` after the LoRA is added. Their defaults change nothing.
    """
    for component in frozen_components(pipeline):
        component.requires_grad_(False).eval()
    if not isinstance(pipeline, FluxPipeline | QwenImagePipeline):
        raise TypeError(f"no policy for {type(pipeline).__name__}; supported: {', '.join(SUPPORTED_PIPELINES)}")
    add_lora(pipeline.transformer, rank=lora_rank, alpha=lora_alpha, target_modules=lora_targets)
    switches = dict(
        forward_batch_size=forward_batch_size, grad_attention=grad_attention, no_grad_attention=no_grad_attention
    )
    if isinstance(pipeline, FluxPipeline):
        if max_sequence_length is None:
            max_sequence_length = min(512, pipeline.tokenizer_2.model_max_length)
        policy = FluxPolicy(pipeline, max_sequence_length, strict_prompt_length, **switches)
    else:
        max_sequence_length = pipeline.tokenizer_max_length if max_sequence_length is None else max_sequence_length
        policy = QwenImagePolicy(pipeline, max_sequence_length, strict_prompt_length, **switches)
    if compile_blocks:
        compile_transformer_blocks(pipeline.transformer)
    return policy


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that require grad, by name (after `add_lora`: exactly the LoRA A and B matrices)."""
    return {name: parameter for name, parameter in module.named_parameters() if parameter.requires_grad}
