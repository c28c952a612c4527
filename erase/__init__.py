"""erase: remove concepts from Stable Diffusion models, export them, and audit that they are gone."""

__version__ = "0.1.0"
