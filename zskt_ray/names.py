"""The project's vocabulary: every name that more than one layer writes or reads.

Metric names, MLflow tags, trial statuses, run kinds, the keys a trial reports to Ray Tune, Optuna
user attributes and file names live here once. The loop, the study layer (Ray Tune, Optuna,
MLflow) and the analysis layer all import them from this module, which imports nothing, so that a
name can be followed from the line that writes it to the line that reads it.
"""

from __future__ import annotations

# ---------------------------------------------------------------- metrics

# What the loop reports at each evaluation interval (mean over the iterations since the last one).
TRAIN_METRICS = (
    "loss_g",  # generator loss (default: -KL on the generator's batch), mean over generator steps
    "loss_s",  # student loss KL + beta * AT, mean over student steps
    "kl",  # student-step KL(T || S)
    "at",  # student-step attention term, summed over groups (before beta)
    "teacher_conf",  # mean max-softmax of the teacher on pseudo images
    "student_conf",  # mean max-softmax of the student on pseudo images (last student step)
    "pseudo_agreement",  # fraction of pseudo images where argmax T == argmax S (last student step)
)
# Further terms the loop reports only when the run's objective has them (DistillConfig's
# adversarial_discrepancy, student_discrepancy and prior_* fields; the defaults report none).
# Generator-side terms are unweighted means over the generator steps; ``loss_g`` is then the
# weighted sum -g_adv + prior_bn * g_bn + prior_onehot * g_onehot + prior_entropy * g_entropy.
OBJECTIVE_METRICS = (
    "l1",  # student-step L1 discrepancy of the logits (student_discrepancy 'l1'; 'kl' still shown)
    "g_adv",  # the adversarial discrepancy (KL or L1) on the generator's batch, with a prior on
    "g_bn",  # batch-norm statistics term, summed over the teacher's batch-norm layers
    "g_onehot",  # DAFL one-hot term
    "g_entropy",  # DAFL information-entropy term (sum p log10 p; <= 0)
)
SCHEDULE_METRICS = ("lr_s", "lr_g")  # the cosine schedules' current learning rates
SPEED_METRIC = "iters_per_s"
VAL_ACC = "val_acc"
TEST_ACC = "test_acc"
MTE = "mte"
# Every metric of a loop report, in order.
CURVE_METRICS = (*TRAIN_METRICS, VAL_ACC, *SCHEDULE_METRICS, SPEED_METRIC)

# Final metrics of a completed trial (the loop's vocabulary plus evaluation results).
FINAL_METRICS = (
    VAL_ACC,
    TEST_ACC,
    MTE,
    "mte_k",
    "mte_xi",
    "mte_n_test",
    "teacher_test_acc",
    "iterations_done",
    "wall_time_s",
)
# Metrics a study may optimise (test accuracy never: that would leak the test set).
OBJECTIVES = (VAL_ACC, "pseudo_agreement", "kl", "loss_s")
MINIMISED = ("kl", "loss_s")  # objectives that are better when smaller

# ---------------------------------------------------------------- trial statuses and kinds

COMPLETED, PRUNED, FAILED = "completed", "pruned", "failed"
# A trial in flight when the study was interrupted (Ctrl-C); resuming the study continues it.
INTERRUPTED = "interrupted"
RUNNING = "running"

KIND_STUDY = "study"  # the parent run of a study
KIND_SEARCH, KIND_FINAL, KIND_KDAT = "search", "final", "kdat"
TRIAL_KINDS = (KIND_SEARCH, KIND_FINAL, KIND_KDAT)

# ---------------------------------------------------------------- keys of a Tune report

ITERATION = "iteration"  # loop iteration of the report (the scheduler's time attribute)
BUDGET = "iterations"  # the trial's full iteration budget
RUN_ID = "mlflow_run_id"
STATUS = "zskt_status"  # "running" on interval reports, "completed" / "failed" on a last report
REASON = "zskt_status_reason"
CONFIG_ID = "config_id"

# ---------------------------------------------------------------- MLflow tags

TAG_STUDY = "zskt.study"
TAG_KIND = "zskt.kind"
TAG_TRIAL = "zskt.trial_id"
TAG_STATUS = "zskt.status"
TAG_REASON = "zskt.status_reason"
TAG_CONFIG_ID = "zskt.config_id"
TAG_DEVICE = "zskt.device"
TAG_HOSTNAME = "zskt.hostname"
TAG_GPU_NAME = "zskt.gpu_name"
TAG_TORCH_VERSION = "zskt.torch_version"
TAG_NODE_ID = "zskt.node_id"  # Ray node the trial (last) ran on
TAG_NODE_IP = "zskt.node_ip"
TAG_NODES = "zskt.nodes"  # every Ray node id the trial ran on, in order (a retry after node loss)
TAG_CUDA_VISIBLE = "zskt.cuda_visible_devices"  # the GPU(s) Ray assigned to the trial
TAG_RESUMED_AT = "zskt.resumed_at"  # iteration of the checkpoint a trial last continued from
TAG_DEVICE_NOTE = "zskt.device_note"  # why the trial runs on another device than it asked for
TAG_SUMMARY_PREFIX = "zskt.summary."
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
# Experiment tag MLflow 3's UI reads to open an experiment in its model-training view (runs table)
# instead of the GenAI traces view.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

# ---------------------------------------------------------------- Optuna user attributes

ATTR_TUNE_ID = "tune_trial_id"
ATTR_RUN_ID = "mlflow_run_id"
ATTR_STATUS = "zskt_status"
ATTR_REASON = "zskt_status_reason"
ATTR_CONFIG_ID = "config_id"
ATTR_FINGERPRINT = "zskt_fingerprint"  # study-level
ATTR_FINAL_CONFIGS = "final_configs"  # study-level: the configurations chosen for re-runs

# ---------------------------------------------------------------- file names

STUDY_FILE_ARTIFACT = "study.yaml"  # the resolved study, logged on the parent run
CONFIG_FILE = "config.yaml"
STUDENT_FILE = "student.pt"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
TRANSITION_CURVES_ARTIFACT = "mte/transition_curves.json"
IMAGES_ARTIFACT_DIR = "images"
# The toy problem's decision-region picture (PNG strip and GIF), in a run directory and as
# artifacts under IMAGES_ARTIFACT_DIR.
REGIONS_PNG = "toy2d.png"
REGIONS_GIF = "toy2d.gif"
STUDENT_ARTIFACT_DIR = "student"
MLFLOW_DB = "mlflow.db"
OPTUNA_DB = "optuna.db"
OPTUNA_JOURNAL = "optuna.journal"  # Optuna journal file (storage.shared: true default)
