"""erase: remove concepts from Stable Diffusion models, export them, and audit that they are gone."""

__version__ = "0.1.0"

from erase.zoo import registry as _zoo_registry  # noqa: F401 (registers the `zoo:` model source)
