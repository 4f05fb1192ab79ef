"""Flow-GRPO policy optimisation of a flow-matching generator (FLUX.1-dev, Qwen-Image, or the tiny embedded Flux)
with an SDE sampler, top-k/bottom-k group filtering and a KL penalty to the reference. Built in the RL issue."""
