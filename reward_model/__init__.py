"""SpatialScore reward model: Qwen2.5-VL + LoRA, a reward token and a Gaussian (mean, std) head trained with a
Bradley-Terry objective on (prompt, perfect image, perturbed image) triplets. Built in the reward-model issue."""
