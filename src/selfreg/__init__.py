"""selfreg: image-classification research toolkit built around RegNet of Xu et al."""
from .factory import create_model, list_models
from .registry import register_model
from .version import __version__

__all__ = ["create_model", "list_models", "register_model", "__version__"]
