"""minigpt_jax: train GPT-2-class language models from scratch in JAX/Flax."""
