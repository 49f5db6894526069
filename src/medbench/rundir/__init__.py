"""The run directory: its layout (names), what it records (readers and writers) and who may write into it.

Everything that reads or writes a run directory imports its names and readers from here."""
from medbench.rundir.claim import LOCK, claim, claim_new, locked
from medbench.rundir.evaluations import (
                                    check_name,
                                    derived_name,
                                    free_name,
                                    list_evaluations,
                                    publish,
                                    read_evaluation,
                                    staging_dir,
)
from medbench.rundir.layout import (
                                    CALIBRATION,
                                    CARD_JSON,
                                    CARD_MD,
                                    CHECKPOINT_INDEX,
                                    CHECKPOINTS,
                                    CONFIG,
                                    DATA_SPEC,
                                    EVALUATION_JSON,
                                    EVALUATIONS,
                                    HISTORY,
                                    LEAKAGE,
                                    MEDMNIST_EXPORT,
                                    MEMBERS,
                                    METRICS,
                                    PREDICTIONS,
                                    REPORT,
                                    RESUME,
                                    ROBUSTNESS,
                                    SHOWN_FILES,
                                    SKIPPED,
                                    TENSORBOARD,
                                    WEIGHTS,
                                    evaluation_dir,
                                    member_dirs,
                                    predictions_path,
                                    require_run_dir,
)
from medbench.rundir.predictions import (
                                    PredictionTable,
                                    medmnist_file_name,
                                    read_prediction_table,
                                    read_predictions,
                                    safe_run_name,
                                    write_medmnist_export,
                                    write_prediction_table,
                                    write_predictions,
)
from medbench.rundir.records import (
                                    DataSpec,
                                    data_spec,
                                    kept_checkpoints,
                                    model_weights,
                                    read_data_spec,
                                    read_metrics,
                                    read_provenance,
                                    recorded_md5,
                                    unfinished,
                                    write_data_spec,
                                    write_metrics,
)

__all__ = ["LOCK", "claim", "claim_new", "locked", "CALIBRATION", "CARD_JSON", "CARD_MD", "CHECKPOINT_INDEX",
           "CHECKPOINTS", "CONFIG", "DATA_SPEC", "EVALUATION_JSON", "EVALUATIONS", "HISTORY", "LEAKAGE",
           "MEDMNIST_EXPORT", "MEMBERS", "METRICS", "PREDICTIONS", "REPORT", "RESUME", "ROBUSTNESS", "SHOWN_FILES",
           "SKIPPED", "TENSORBOARD", "WEIGHTS", "evaluation_dir", "member_dirs", "predictions_path",
           "require_run_dir", "check_name", "derived_name", "free_name", "list_evaluations", "publish",
           "read_evaluation", "staging_dir", "PredictionTable", "medmnist_file_name", "read_prediction_table",
           "read_predictions", "safe_run_name", "write_medmnist_export", "write_prediction_table",
           "write_predictions", "DataSpec", "data_spec", "kept_checkpoints", "model_weights", "read_data_spec",
           "read_metrics", "read_provenance", "recorded_md5", "unfinished", "write_data_spec", "write_metrics"]
