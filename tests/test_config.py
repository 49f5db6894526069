import pytest
from pydantic import ValidationError

from medbench.config import RECIPES, RunConfig, dump_config, load_config, read_config_file, resolve_config
from medbench.errors import MedbenchError


def test_recipes():
    default = resolve_config({"dataset": "breastmnist"})
    assert default == resolve_config({"dataset": "breastmnist", "recipe": "default"}).model_copy(
        update={"recipe": None})
    assert (default.batch_size, default.schedule) == (32, "cosine")
    recipe = resolve_config({"dataset": "breastmnist", "recipe": "medmnist-v2"})
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.epochs) == ("adam", 1e-3, 128, 100)
    assert (recipe.milestones, recipe.gamma, recipe.norm_mean, recipe.norm_std) == ([0.5, 0.75], 0.1, 0.5, 0.5)
    assert recipe.select_metric == "auc"
    ens = resolve_config({"dataset": "breastmnist", "recipe": "small-ensemble"})
    fast = resolve_config({"dataset": "breastmnist", "recipe": "fast"})
    assert ens.members == 10 and ens.model_copy(update={"members": 1, "recipe": "fast"}) == fast


def test_explicit_settings_win_over_the_recipe():
    cfg = resolve_config({"dataset": "breastmnist", "recipe": "medmnist-v2", "epochs": 3, "lr": 0.01})
    assert cfg.epochs == 3 and cfg.lr == 0.01 and cfg.batch_size == RECIPES["medmnist-v2"]["batch_size"]


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(MedbenchError, match=r"unknown key 'epoch' \(valid keys: dataset, size"):
        resolve_config({"dataset": "breastmnist", "epoch": 3})


@pytest.mark.parametrize("bad, fragment", [
    ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ({"optimizer": "lamb"}, "optimizer: Input should be 'adam', 'adamw' or 'sgd'"),
    ({"device": "tpu"}, "device: String should match pattern"),
    ({"recipe": "quick"}, "unknown recipe 'quick'; valid: default, medmnist-v2, fast, small-ensemble"),
    ({"norm_std": [0.2, 0.0, 0.2]}, "norm_std: Value error, every norm_std value must be > 0"),
])
def test_bad_values_are_clear(bad, fragment):
    with pytest.raises(MedbenchError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        resolve_config({"dataset": "breastmnist", **bad})


def test_missing_dataset():
    with pytest.raises(MedbenchError, match="'dataset' is required"):
        resolve_config({})


def test_yaml_round_trip_ignores_provenance(tmp_path):
    cfg = resolve_config({"dataset": "retinamnist", "ordinal_loss": "corn", "milestones": [0.3], "seed": 7})
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg, {"torch": "x", "data_md5": "abc"}))
    assert "provenance:" in path.read_text()
    assert load_config(path) == cfg
    assert "provenance" not in read_config_file(path)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(MedbenchError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(MedbenchError, match="list.yaml: expected a mapping"):
        load_config(listy)
    with pytest.raises(MedbenchError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")
    # YAML is read with the safe loader: python tags are refused, not executed
    evil = tmp_path / "evil.yaml"
    evil.write_text("dataset: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(MedbenchError, match="not valid YAML"):
        load_config(evil)


def test_config_is_validated_on_assignment():
    cfg = RunConfig(dataset="breastmnist")
    with pytest.raises(ValidationError):
        cfg.epochs = -1


def test_fast_recipe_sets_the_model_and_flags_still_win():
    fast = resolve_config({"dataset": "breastmnist", "recipe": "fast"})
    assert (fast.model, fast.epochs, fast.schedule) == ("cnn5", 30, "cosine")
    assert resolve_config({"dataset": "breastmnist", "recipe": "fast", "model": "resnet18"}).model == "resnet18"


def test_per_channel_normalisation_is_checked():
    from medbench.build import normalization

    cfg = resolve_config({"dataset": "breastmnist", "norm_mean": [0.1, 0.2], "norm_std": 0.3})
    with pytest.raises(MedbenchError, match="norm_mean has 2 values; the model takes 1 channels"):
        normalization(cfg, 1)
    imagenet = resolve_config({"dataset": "breastmnist", "model": "resnet18", "pretrained": True})
    mean, std = normalization(imagenet, 1)  # grey input: the RGB statistics averaged
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3]) and std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert normalization(imagenet, 3) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert normalization(resolve_config({"dataset": "breastmnist"}), 3) == ([0.5] * 3, [0.5] * 3)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field, value, fragment", [
    ("epochs", -1, "greater than or equal to 1"), ("epochs", 10 ** 9, "less than or equal to 100000"),
    ("lr", NAN, "finite number"), ("lr", INF, "finite number"), ("lr", -1e-3, "greater than 0"),
    ("lr", "1e400", "finite number"), ("batch_size", 0, "greater than or equal to 2"),
    ("batch_size", 10 ** 9, "less than or equal to 65536"), ("eval_batch_size", 0, "greater than or equal to 1"),
    ("momentum", 1.0, "less than 1"), ("momentum", -0.1, "greater than or equal to 0"),
    ("label_smoothing", 1.0, "less than 1"), ("mixup", -0.5, "greater than or equal to 0"),
    ("cutmix", NAN, "finite number"), ("milestones", [0.0, 0.5], "strictly between 0 and 1"),
    ("milestones", [0.5, 1.0], "strictly between 0 and 1"), ("milestones", [NAN], "finite number"),
    ("drop_rate", 1.0, "less than 1"), ("drop_path_rate", -0.1, "greater than or equal to 0"),
    ("size", 0, "greater than or equal to 1"), ("size", 20000, "less than or equal to 2048"),
    ("seed", -1, "greater than or equal to 0"), ("seed", 2 ** 63, "less than 9223372036854775808"),
    ("split_seed", -1, "greater than or equal to 0"), ("weight_decay", INF, "finite number"),
    ("gamma", 0, "greater than 0"), ("ema", NAN, "finite number"), ("bootstrap", 10 ** 8, "less than or equal"),
    ("members", 0, "greater than or equal to 1"), ("keep_checkpoints", -1, "greater than or equal to 0"),
    ("truncate", 10 ** 6, "less than or equal to 100"), ("input_size", 10 ** 6, "less than or equal to 2048"),
    ("norm_std", INF, "finite number"), ("synthetic_ratio", INF, "finite number"),
    ("backbone_lr_scale", 0, "greater than 0"), ("val_from_train", NAN, "finite number"),
    ("dataset", "", "at least 1 character"), ("label_cols", [], "at least one column name"),
    ("device", "cuda:123456", "String should match pattern"),
])
def test_out_of_range_values_are_refused_naming_the_field(field, value, fragment):
    with pytest.raises(MedbenchError) as err:
        resolve_config({"dataset": "breastmnist", field: value})
    message = str(err.value)
    assert f"{field}" in message and fragment in message and "\n" not in message, message


@pytest.mark.parametrize("extra, fragment", [
    ({"seed": 2 ** 62, "members": 4}, "seed 4611686018427387904 x members 4 reaches 2**63"),
    ({"seed": 2 ** 40, "model": "sk:logreg"}, "too large for scikit-learn models; choose one below 2**32"),
])
def test_seeds_that_overflow_later_are_refused(extra, fragment):
    with pytest.raises(MedbenchError, match=fragment.replace("*", r"\*")) as err:
        resolve_config({"dataset": "breastmnist", **extra})
    assert "got {" not in str(err.value)  # a check across fields does not dump the whole config


def test_largest_allowed_values_pass():
    cfg = resolve_config({"dataset": "breastmnist", "seed": 2 ** 63 - 1, "epochs": 100_000, "bootstrap": 100_000,
                          "milestones": [0.01, 0.99], "momentum": 0.0, "size": 2048})
    assert cfg.seed == 2 ** 63 - 1


# a folder run's config.yaml as `medbench train` wrote it before the source was typed (every flat field)
OLD_FOLDER_RUN = """\
dataset: folder:../shared/data/chest_xray_subset
size: 64
as_rgb: false
norm_mean: null
norm_std: null
label_regex: (NORMAL|bacteria|virus)
image_col: null
label_cols: null
split_col: null
uncertain: u-ones
fit: crop
val_from_train: 0.2
test_from_train: 0.0
group_regex: (person\\d+)_
split_seed: 3
skip_bad: true
allow_outside_root: false
model: cnn5
epochs: 20
provenance:
  torch: 2.5.0
"""


def test_old_config_files_load_unchanged_and_give_a_typed_source(tmp_path):
    from medbench.config import FolderSource

    path = tmp_path / "config.yaml"
    path.write_text(OLD_FOLDER_RUN)
    cfg = load_config(path)
    assert cfg.label_regex == "(NORMAL|bacteria|virus)" and cfg.fit == "crop"  # the flat fields stay
    src = cfg.source
    assert isinstance(src, FolderSource) and src.kind == "folder" and src.path == "../shared/data/chest_xray_subset"
    assert src.loader_options() == dict(label_regex="(NORMAL|bacteria|virus)", resize="crop", val_from_train=0.2,
                                        test_from_train=0.0, group_regex=r"(person\d+)_", seed=3, skip_bad=True)
    assert "source" not in cfg.model_dump() and "source" not in dump_config(cfg)  # derived, never saved
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_csv_and_medmnist_sources():
    csv = resolve_config({"dataset": "csv:data/labels.csv", "image_col": "Path", "label_cols": ["A", "B"],
                          "split_col": "Split", "uncertain": "u-ignore", "allow_outside_root": True})
    assert (csv.source.kind, csv.source.path) == ("csv", "data/labels.csv")
    assert csv.source.loader_options() == dict(
        image_col="Path", label_cols=["A", "B"], split_col="Split", uncertain="u-ignore", resize="pad",
        val_from_train=0.0, test_from_train=0.0, group_regex=None, seed=0, skip_bad=False, allow_outside_root=True)
    mnist = resolve_config({"dataset": "breastmnist", "fit": "crop"}).source  # fit: predict uses it for any run
    assert (mnist.kind, mnist.name, mnist.loader_options()) == ("medmnist", "breastmnist", {})
    assert not hasattr(mnist, "label_regex") and not hasattr(csv.source, "label_regex")  # only its own options


@pytest.mark.parametrize("settings, fragment", [
    ({"dataset": "breastmnist", "image_col": "Path"},
     "image_col (csv: only) does not apply to MedMNIST dataset 'breastmnist'; remove it"),
    ({"dataset": "breastmnist", "val_from_train": 0.2, "skip_bad": True},
     "val_from_train (folder:/csv: only), skip_bad (folder:/csv: only) do not apply to MedMNIST dataset"),
    ({"dataset": "folder:x", "label_cols": ["A"]}, "label_cols (csv: only) does not apply to folder: dataset"),
    ({"dataset": "csv:x.csv", "image_col": "p", "label_cols": ["A"], "label_regex": "(a)"},
     "label_regex (folder: only) does not apply to csv: dataset 'csv:x.csv'"),
    ({"dataset": "csv:x.csv", "image_col": "p"}, "csv:x.csv: a CSV dataset needs --image-col and --label-cols"),
])
def test_options_of_another_kind_of_dataset_are_refused_in_one_line(settings, fragment):
    with pytest.raises(MedbenchError) as err:
        resolve_config(settings, where="train")
    assert str(err.value) == f"train: {fragment}" or fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_every_field_declares_its_help_and_group():
    from medbench.config import GROUPS, meta

    for name, info in RunConfig.model_fields.items():
        assert info.description and meta(info).get("group") in GROUPS, name
