"""Shared fixtures: small SpatialWorld datasets built once per test session (real builds, small sizes)."""

from __future__ import annotations

import pytest
import torch

from data_synthesis.build import BuildConfig, build


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """60 pairs at 128 px, built with 2 workers."""
    out = tmp_path_factory.mktemp("datasets") / "small"
    build(
        BuildConfig(num_pairs=60, seed=3, resolution=128, split_fractions=(0.6, 0.2, 0.2)),
        out,
        workers=2,
        progress=False,
    )
    return out


@pytest.fixture
def one_thread():
    """Tiny model steps gain nothing from intra-op threads, and with another process busy on the CPU two threads
    spin-wait and make each step tens of times slower. Tests of the tiny models use this fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def processor():
    """The offline SpatialWorld tokenizer + image processor of the tiny reward model."""
    from reward_model.tokenizer import build_spatialworld_processor

    return build_spatialworld_processor()


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A real FluxPipeline with random weights from tiny configs (diffusers' own test sizes), saved to a dir; both
    tokenizers are the reward model's offline SpatialWorld tokenizer."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from reward_model import build_spatialworld_processor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = build_spatialworld_processor().tokenizer
    tokenizer.model_max_length = 64
    pad = tokenizer.pad_token_id
    clip = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        projection_dim=32,
        pad_token_id=pad,
        bos_token_id=pad,
        eos_token_id=pad,
    )
    t5 = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, pad_token_id=pad)
    vae = AutoencoderKL(
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    )
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=CLIPTextModel(clip),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=tokenizer,
        transformer=transformer,
    )
    directory = tmp_path_factory.mktemp("tiny_flux")
    pipeline.save_pretrained(directory)
    return directory
