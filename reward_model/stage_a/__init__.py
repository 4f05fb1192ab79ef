"""Stage A of the tiny reward backbone: sentence verification and image-text matching on SpatialWorld scenes, in
stage B's own input format (`reward_text`: image, SpatialWorld prompt, `<|reward|>`).

The tiny Qwen2.5-VL starts from random weights; Bradley-Terry alone collapses it to an input-independent reward,
and grounded captions (the first stage A tried) taught it what is where but not to compare a long prompt with the
image and carry the verdict to `<|reward|>`. This stage trains exactly that, with dense exact labels from the
SpatialWorld oracle (docs/research/2026-11_reward_tiny.md has the history):

- `examples.py`: one labelled (image, prompt, per-sentence verdict) example per seed, and the dense targets read off
  the exact layout;
- `generated.py`: the generator's own samples (a draw dir) as examples labelled by the oracle's reading of each
  image, mixed into the stream at `generated_fraction` (the default critic's stage A,
  configs/reward/tiny_stage_a_generated.yaml);
- `data.py`: the training stream with its curricula (most objects per scene; an easy prompt start stating 1-2
  relations of a few families), the held-out sets, the collator and `VerificationDataModule`;
- `model.py`: `GroundingNetwork` (the backbone and its heads), `build_verification_network` (from config numbers,
  `init_from` the previous phase) and the backbone directory stage B loads (`save_grounded_backbone`);
- `losses.py`: the losses (verdict, match, colour, binding, image cells, slots, coordinates, stated margins) and
  accuracies, pure functions;
- `module.py`: `VerificationModule`, the LightningModule; `callbacks.py`: `SaveGroundedBackbone`.

The shipped checkpoint (checkpoints/reward_tiny_stage_a) is ten phases, each from the previous one's weights, each
adding what made the sentence verdict learnable: `python -m reward_model pretrain --config
configs/reward/tiny_stage_a_v<N>.yaml [--init-from DIR]` for N = 3 .. 12 (`make pretrain-reward`, ~3.5 h on 2 CPU
cores).

Simplified: one prompt generator (SpatialWorld's `describe_sentences`); the caption loss is not mixed in (the
token-colour loss takes its place as the vision-grounding task).
"""

from reward_model.stage_a.callbacks import SaveGroundedBackbone
from reward_model.stage_a.data import (
    PromptPhase,
    VerificationBatch,
    VerificationCollator,
    VerificationDataModule,
    VerificationStream,
    parse_prompt_curriculum,
    validation_examples,
)
from reward_model.stage_a.examples import VerificationExample, simple_verification_example, verification_example
from reward_model.stage_a.losses import grounding_accuracies, grounding_losses, total_loss
from reward_model.stage_a.model import (
    HEADS_FILE,
    GroundingNetwork,
    GroundingOutput,
    build_grounding_network,
    build_verification_network,
    load_grounding_heads,
    read_grounding_heads,
    save_grounded_backbone,
)
from reward_model.stage_a.module import VerificationModule, warmup_cosine

__all__ = [
    "HEADS_FILE",
    "GroundingNetwork",
    "GroundingOutput",
    "PromptPhase",
    "SaveGroundedBackbone",
    "VerificationBatch",
    "VerificationCollator",
    "VerificationDataModule",
    "VerificationExample",
    "VerificationModule",
    "VerificationStream",
    "build_grounding_network",
    "build_verification_network",
    "grounding_accuracies",
    "grounding_losses",
    "load_grounding_heads",
    "parse_prompt_curriculum",
    "read_grounding_heads",
    "save_grounded_backbone",
    "simple_verification_example",
    "total_loss",
    "validation_examples",
    "verification_example",
    "warmup_cosine",
]
