"""Models: ``create_model(name, num_classes=..., in_chans=..., img_size=...)``."""
from medbench.models import resnet  # noqa: F401  (registers the built-ins)
from medbench.models.registry import create_model, list_models, model_entry, register_model

__all__ = ["create_model", "list_models", "model_entry", "register_model"]
