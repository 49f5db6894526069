"""The typed run configuration (``RunConfig``, saved as config.yaml), its recipes, files and data sources.

- :mod:`~medbench.config.run_config`: RunConfig, every field declared once (type, checks, help, flag)
- :mod:`~medbench.config.setting`: the field declaration helper and the argument groups
- :mod:`~medbench.config.sources`: the typed data source (MedMNIST | folder | CSV) derived from the flat fields
- :mod:`~medbench.config.recipes`: named recipes and validation (:func:`resolve_config`)
- :mod:`~medbench.config.files`: YAML config files, ``--set`` overrides, config.yaml written back
"""
from medbench.config.files import PROVENANCE_KEY, dump_config, load_config, parse_overrides, read_config_file, read_yaml
from medbench.config.recipes import RECIPES, resolve_config
from medbench.config.run_config import BOOTSTRAP_LIMIT, MAX_SIZE, SEED_LIMIT, SK_SEED_LIMIT, RunConfig
from medbench.config.setting import GROUPS, meta, setting
from medbench.config.sources import CSVSource, FolderSource, MedMNISTSource, Source, parse_dataset, source_of

__all__ = ["PROVENANCE_KEY", "dump_config", "load_config", "parse_overrides", "read_config_file", "read_yaml",
           "RECIPES", "resolve_config", "BOOTSTRAP_LIMIT", "MAX_SIZE", "SEED_LIMIT", "SK_SEED_LIMIT", "RunConfig",
           "GROUPS", "meta", "setting", "CSVSource", "FolderSource", "MedMNISTSource", "Source", "parse_dataset",
           "source_of"]
