"""rl_policy.policy: the tiny FluxPipeline (pixel autoencoder, offline text encoders), LoRA and the reference policy,
prompt caching and length errors, loading from a local directory."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLForConditionalGeneration

from reward_model import build_spatialworld_processor, tiny_backbone_config
from rl_policy.policy import (
    FLUX_LORA_TARGETS,
    PixelUnshuffleAutoencoder,
    QwenImagePolicy,
    add_lora,
    build_policy,
    build_tiny_flux_pipeline,
    load_pipeline,
    reference_policy,
    trainable_parameters,
)
from rl_policy.sde import flux_shift_mu, flux_sigmas, ode_step

PROMPT = "The scene is a plain light background with two objects in it. The red square is left of the blue circle."


@pytest.fixture
def tiny_policy(one_thread):
    return build_policy(build_tiny_flux_pipeline(max_prompt_tokens=32), lora_rank=4, strict_prompt_length=True)


def velocity_and_inputs(policy, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 64, 48, generator=generator)
    sigma = torch.rand(batch, generator=generator)
    prompt = policy.encode_prompts([PROMPT] * batch)
    return latents, sigma, prompt


def test_tiny_pipeline_is_a_real_flux_pipeline_in_pixel_space(one_thread):
    """1 double + 2 single blocks, 4 heads x 32: 1,216,304 transformer parameters; 32 px -> 64 tokens of 48."""
    pipeline = build_tiny_flux_pipeline()
    assert isinstance(pipeline, FluxPipeline) and pipeline.vae_scale_factor == 2
    assert sum(parameter.numel() for parameter in pipeline.transformer.parameters()) == 1_216_304
    images = pipeline(
        prompt=[PROMPT], height=32, width=32, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=97,
        output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_pixel_autoencoder_is_exact(tiny_policy):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    autoencoder = PixelUnshuffleAutoencoder()
    latents = autoencoder.encode(images).latents
    assert latents.shape == (2, 12, 16, 16)
    assert torch.equal(autoencoder.decode(latents).sample, images)
    packed = tiny_policy.encode_images(images)
    assert packed.shape == (2, 64, 48)
    torch.testing.assert_close(tiny_policy.decode(packed, 32, 32), images, rtol=0, atol=1e-6)


def test_sigmas_are_flux_schedule_at_the_token_count(tiny_policy):
    torch.testing.assert_close(tiny_policy.sigmas(6, 32, 32), flux_sigmas(6, flux_shift_mu(64)))
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny_policy.latent_grid(30, 32)


def test_lora_targets_exist_and_only_lora_is_trainable(tiny_policy):
    trainable = trainable_parameters(tiny_policy.pipeline.transformer)
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    for target in FLUX_LORA_TARGETS:
        assert any(f"{target}.lora_A" in name for name in trainable), target
    for component in ("text_encoder", "text_encoder_2", "vae"):
        assert not trainable_parameters(getattr(tiny_policy.pipeline, component))
    with pytest.raises(ValueError, match="attn.to_qkv match no module"):
        add_lora(build_tiny_flux_pipeline().transformer, target_modules=("attn.to_q", "attn.to_qkv"))


def test_optimizer_steps_change_only_lora_and_reference_is_the_base(one_thread):
    """Base output first; then LoRA, 3 Adam steps on a flow-matching-like loss: every LoRA matrix moved, nothing else
    did, the adapted output differs and with the adapter disabled the output is the base output bit for bit."""
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=32)
    policy = build_policy(pipeline, lora_rank=4, lora_targets=FLUX_LORA_TARGETS[:4], strict_prompt_length=True)
    latents, sigma, prompt = velocity_and_inputs(policy)
    with torch.no_grad(), reference_policy(policy.transformer):
        base_output = policy.velocity(latents, sigma, prompt, 32, 32)
    frozen = {
        name: parameter.detach().clone()
        for module in (pipeline.transformer, pipeline.text_encoder, pipeline.text_encoder_2)
        for name, parameter in module.named_parameters()
        if not parameter.requires_grad
    }
    trainable = trainable_parameters(pipeline.transformer)
    initial = {name: parameter.detach().clone() for name, parameter in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-2)
    target = torch.randn_like(latents)
    for _ in range(3):
        loss = (policy.velocity(latents, sigma, prompt, 32, 32) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not torch.equal(parameter, initial[name]) for name, parameter in trainable.items())
    still = {
        name: parameter
        for module in (pipeline.transformer, pipeline.text_encoder, pipeline.text_encoder_2)
        for name, parameter in module.named_parameters()
        if not parameter.requires_grad
    }
    assert still.keys() == frozen.keys() and all(torch.equal(still[name], frozen[name]) for name in frozen)
    with torch.no_grad():
        adapted = policy.velocity(latents, sigma, prompt, 32, 32)
        with reference_policy(policy.transformer):
            reference = policy.velocity(latents, sigma, prompt, 32, 32)
    assert not torch.equal(adapted, base_output)
    assert torch.equal(reference, base_output)


def test_true_cfg_is_one_batched_forward(tiny_policy):
    """v = v_neg + s (v - v_neg), the two halves computed as one batch equal the two separate calls."""
    latents, sigma, prompt = velocity_and_inputs(tiny_policy)
    negative = tiny_policy.encode_prompts([""] * 2)
    with torch.no_grad():
        guided = tiny_policy.velocity(latents, sigma, prompt, 32, 32, negative=negative, true_cfg_scale=3.0)
        conditional = tiny_policy.velocity(latents, sigma, prompt, 32, 32)
        unconditional = tiny_policy.velocity(latents, sigma, negative, 32, 32)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional))
    with pytest.raises(ValueError, match="guidance must be None"):
        tiny_policy.velocity(latents, sigma, prompt, 32, 32, guidance=3.5)


def test_guidance_embedding_like_flux_dev(one_thread):
    """FLUX.1-dev is guidance-distilled: one forward with the guidance value embedded, which must then be given."""
    policy = build_policy(build_tiny_flux_pipeline(max_prompt_tokens=32, guidance_embeds=True), lora_rank=4)
    latents, sigma, prompt = velocity_and_inputs(policy)
    with torch.no_grad():
        low, high = (policy.velocity(latents, sigma, prompt, 32, 32, guidance=value) for value in (1.0, 3.5))
    assert low.shape == (2, 64, 48) and not torch.equal(low, high)
    with pytest.raises(ValueError, match="guidance must be given"):
        policy.velocity(latents, sigma, prompt, 32, 32)


def test_prompt_embeddings_are_cached(tiny_policy, monkeypatch):
    calls = []
    encode = tiny_policy.pipeline.encode_prompt
    monkeypatch.setattr(
        tiny_policy.pipeline, "encode_prompt", lambda **kwargs: calls.append(kwargs) or encode(**kwargs)
    )
    first = tiny_policy.encode_prompts([PROMPT, "a red square", PROMPT])
    second = tiny_policy.encode_prompts(["a red square", PROMPT])
    assert [call["prompt"] for call in calls] == [[PROMPT, "a red square"]]
    assert first.prompt_embeds.shape == (3, 33, 64) and first.pooled.shape == (3, 64)
    assert torch.equal(second.prompt_embeds, first.prompt_embeds[[1, 0]])
    assert torch.equal(first.prompt_embeds[0], first.prompt_embeds[2])


def test_prompt_over_the_limit_errors_in_embedded_default_and_is_counted_otherwise(one_thread):
    long_prompt = " ".join(["red square"] * 20)  # 40 words
    strict = build_policy(build_tiny_flux_pipeline(max_prompt_tokens=32), lora_rank=4, strict_prompt_length=True)
    with pytest.raises(ValueError, match="40 tokens, over the text encoder's limit"):
        strict.encode_prompts([long_prompt])
    lenient = build_policy(build_tiny_flux_pipeline(max_prompt_tokens=32), lora_rank=4)
    assert lenient.encode_prompts([long_prompt]).prompt_embeds.shape == (1, 33, 64)
    assert lenient.truncated_prompts == 1


def test_tiny_pipeline_saves_and_loads_as_a_diffusers_directory(tmp_path, one_thread):
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=32)
    pipeline.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path)
    assert isinstance(loaded, FluxPipeline) and isinstance(loaded.vae, PixelUnshuffleAutoencoder)
    assert (
        loaded.tokenizer_max_length == 33 and loaded.tokenizer(PROMPT).input_ids == pipeline.tokenizer(PROMPT).input_ids
    )
    for name, tensor in pipeline.transformer.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[name], tensor)


def test_load_pipeline_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="'StableDiffusionPipeline' is not one of FluxPipeline, QwenImagePipeline"):
        load_pipeline(tmp_path)
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"], "image_encoder": [None, None]}  # fmt: skip
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\(FluxPipeline\) lacks the component folder\(s\) transformer "):
        load_pipeline(tmp_path)


def test_ode_loop_through_velocity_reproduces_flux_pipeline(tiny_policy):
    """Our step-by-step sampler (velocity + ode_step on policy.sigmas) is FluxPipeline.__call__'s denoising loop."""
    noise = torch.randn(1, 64, 48, generator=torch.Generator().manual_seed(5))
    expected = tiny_policy.pipeline(
        prompt=[PROMPT], height=32, width=32, num_inference_steps=3, latents=noise, output_type="latent",
        max_sequence_length=tiny_policy.max_sequence_length,
    ).images  # fmt: skip
    latents, sigmas = noise, tiny_policy.sigmas(3, 32, 32)
    prompt = tiny_policy.encode_prompts([PROMPT])
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            velocity = tiny_policy.velocity(latents, sigma.expand(1), prompt, 32, 32)
            latents = ode_step(velocity, latents, sigma, sigma_next)
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-5)


def tiny_qwen_image_pipeline() -> QwenImagePipeline:
    """QwenImagePipeline from small configs (diffusers' own tiny Qwen-Image test sizes; reward_model's tiny
    Qwen2.5-VL over the SpatialWorld tokenizer, which has Qwen's chat tokens), random weights."""
    tokenizer = build_spatialworld_processor().tokenizer
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        tiny_backbone_config(
            vocab_size=len(tokenizer), text_hidden_size=32, text_layers=1, text_heads=2, text_kv_heads=1,
            text_intermediate_size=64, vision_hidden_size=16, vision_layers=1, vision_heads=1,
            vision_intermediate_size=32,
        )
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.5, max_shift=0.9, max_image_seq_len=8192, shift=1.0, shift_terminal=0.02, use_dynamic_shifting=True
    )
    pipeline = QwenImagePipeline(scheduler, vae, text_encoder, tokenizer, transformer)
    # The pipeline drops the system template's 34 Qwen tokens; the word-level tokenizer splits it into fewer.
    template_head = pipeline.prompt_template_encode.split("{}")[0]
    pipeline.prompt_template_encode_start_idx = len(tokenizer(template_head).input_ids)
    return pipeline


def test_qwen_image_policy_has_the_same_interface(one_thread):
    """LoRA on the same target names; masked per-prompt embeddings, cached; the ODE loop through velocity equals
    QwenImagePipeline.__call__ (its shift_terminal schedule included); the reference is the base."""
    policy = build_policy(tiny_qwen_image_pipeline(), lora_rank=4, strict_prompt_length=True)
    assert isinstance(policy, QwenImagePolicy)
    trainable = trainable_parameters(policy.transformer)
    assert all(any(f"{target}.lora_A" in name for name in trainable) for target in FLUX_LORA_TARGETS)
    assert not trainable_parameters(policy.pipeline.text_encoder) and not trainable_parameters(policy.pipeline.vae)
    # Kept after the template head: the prompt's words + "<|im_end|> <|im_start|> assistant" (3 + 3, 23 + 3).
    embeddings = policy.encode_prompts(["a red square", PROMPT])
    assert embeddings.pooled is None and embeddings.mask.sum(dim=1).tolist() == [6, 26]
    prompts = policy.encode_prompts([PROMPT])
    assert prompts.mask is None and torch.equal(prompts.prompt_embeds[0], embeddings.prompt_embeds[1])
    noise = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(6))
    expected = policy.pipeline(
        prompt=[PROMPT], height=64, width=64, num_inference_steps=3, latents=noise, output_type="latent"
    ).images
    latents, sigmas = noise, policy.sigmas(3, 64, 64)
    assert sigmas[-2] == pytest.approx(0.02)  # the schedule stretched to the terminal sigma
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            latents = ode_step(policy.velocity(latents, sigma.expand(1), prompts, 64, 64), latents, sigma, sigma_next)
        torch.testing.assert_close(latents, expected, rtol=0, atol=1e-5)
        base = policy.velocity(noise, sigmas[:1], prompts, 64, 64)  # LoRA B = 0: the base network
        for name, parameter in trainable.items():
            if "lora_B" in name:
                parameter.normal_()
        assert not torch.equal(policy.velocity(noise, sigmas[:1], prompts, 64, 64), base)
        with reference_policy(policy.transformer):
            assert torch.equal(policy.velocity(noise, sigmas[:1], prompts, 64, 64), base)
        assert policy.decode(latents, 64, 64).shape == (1, 3, 64, 64)
        assert policy.encode_images(torch.rand(1, 3, 64, 64)).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="guidance must be None"):
        policy.velocity(noise, sigmas[:1], prompts, 64, 64, guidance=3.5)
