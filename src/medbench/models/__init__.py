"""Models: ``create_model(name, num_classes=..., in_chans=..., img_size=...)``; ``list_models()``."""
from medbench.models import cnn, convmixer, resnet, timm_models  # noqa: F401  (register the built-ins)
from medbench.models.registry import catalogue, create_model, list_models, model_entry, model_info, register_model

__all__ = ["catalogue", "create_model", "list_models", "model_entry", "model_info", "register_model"]
