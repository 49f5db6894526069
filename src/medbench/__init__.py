"""medbench: train, evaluate and compare deep-learning classifiers for medical images."""
__version__ = "0.1.0"

from medbench.config import RECIPES, RunConfig, load_config, resolve_config  # noqa: E402
from medbench.data import ImageDataset, list_datasets, load_dataset  # noqa: E402
from medbench.errors import MedbenchError  # noqa: E402
from medbench.models import create_model, list_models  # noqa: E402
from medbench.run import evaluate, train  # noqa: E402

__all__ = ["RECIPES", "RunConfig", "load_config", "resolve_config", "ImageDataset", "list_datasets",
           "load_dataset", "MedbenchError", "create_model", "list_models", "evaluate", "train", "__version__"]
