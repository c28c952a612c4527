"""Loading, building and checking Stable Diffusion pipelines."""
