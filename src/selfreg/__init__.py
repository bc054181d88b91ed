"""selfreg: image-classification research toolkit built around RegNet of Xu et al."""
__version__ = "0.1.0"

from .registry import create_model, list_models, register_model  # noqa: E402

__all__ = ["create_model", "list_models", "register_model", "__version__"]
