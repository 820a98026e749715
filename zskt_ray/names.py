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
# weighted sum -g_adv + prior_bn * g_bn + prior_onehot * g_onehot + prior_entropy * g_entropy,
# and the steps' KL(T || S) comes under GEN_KL (below) whenever loss_g is not -KL (0 with
# adversarial_discrepancy 'none': there is no adversarial term, and the student is not run).
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
# MTE on validation images at the end of a search trial (mte.validation_mte), a search objective
# of multi-objective studies; K, xi and the number of images used travel with it.
VAL_MTE = "val_mte"
VAL_MTE_PARAMS = ("val_mte_k", "val_mte_xi", "val_mte_n")
# Metrics a study may optimise (test accuracy never: that would leak the test set).
# (MINIMISED, below the cost metrics, says which are better when smaller.)
OBJECTIVES = (VAL_ACC, "pseudo_agreement", "kl", "loss_s")

# ---------------------------------------------------------------- run health (zskt_ray/health.py)

# Measured at each evaluation on a fixed noise batch, with the teacher only (zskt_ray/health.py
# defines each one); the loop adds them to its report.
HEALTH_CLASSES = "health_classes"  # classes the teacher predicts on the pseudo batch
HEALTH_CLASS_ENTROPY = "health_class_entropy"  # entropy of that histogram / log(classes)
HEALTH_DIV_INPUT = "health_div_input"  # mean pairwise distance of pseudo inputs / (sqrt 2 * RMS)
HEALTH_DIV_FEATURE = "health_div_feature"  # the same in the teacher's penultimate features
HEALTH_ADV_KL = "health_adv_kl"  # the generator steps' KL(T || S), mean since the last report
HEALTH_ADV_KL_TREND = "health_adv_kl_trend"  # its least-squares slope per report / mean |KL|
HEALTH_GEN_MOVE = "health_gen_move"  # relative change of G's outputs since the last report
HEALTH_FLAG = "health_flag"  # index into HEALTH_STATUSES: 0 healthy, 1 collapsed, 2 stalled
HEALTH_METRICS = (
    HEALTH_CLASSES,
    HEALTH_CLASS_ENTROPY,
    HEALTH_DIV_INPUT,
    HEALTH_DIV_FEATURE,
    HEALTH_ADV_KL,
    HEALTH_ADV_KL_TREND,
    HEALTH_GEN_MOVE,
    HEALTH_FLAG,
)
HEALTHY, COLLAPSED, STALLED = "healthy", "collapsed", "stalled"
HEALTH_STATUSES = (HEALTHY, COLLAPSED, STALLED)
# A generator objective whose loss is not -KL(T || S) reports the KL of its steps under this name;
# otherwise the adversarial KL is -loss_g.
GEN_KL = "kl_g"
TAG_HEALTH = "zskt.health"  # healthy / collapsed / stalled
TAG_HEALTH_REASON = "zskt.health_reason"
TAG_HEALTH_ITERATION = "zskt.health_iteration"  # the evaluation at which the rule flagged the run
# A trial whose wiring audit (zskt_ray/audit.py) failed: the error's one line (AuditError
# subclass: message), e.g. "NetworkAuditError: the teacher was passed as the student: ...".
TAG_AUDIT = "zskt.audit"

# ---------------------------------------------------------------- run cost (zskt_ray/cost.py)

# Cumulative over the run (resumes included), reported with each evaluation.
COST_WALL_S = "cost_wall_s"  # seconds since the run started training, over all its processes
COST_PSEUDO_IMAGES = "cost_pseudo_images"  # inputs the generator produced
COST_TEACHER_FWD, COST_TEACHER_BWD = "cost_teacher_fwd", "cost_teacher_bwd"
COST_STUDENT_FWD, COST_STUDENT_BWD = "cost_student_fwd", "cost_student_bwd"
COST_GENERATOR_FWD, COST_GENERATOR_BWD = "cost_generator_fwd", "cost_generator_bwd"
COST_PASSES = (
    COST_TEACHER_FWD,
    COST_TEACHER_BWD,
    COST_STUDENT_FWD,
    COST_STUDENT_BWD,
    COST_GENERATOR_FWD,
    COST_GENERATOR_BWD,
)
COST_PEAK_MEM_MIB = "cost_peak_mem_mib"  # CUDA max allocated, else the process's peak RSS
COST_METRICS = (COST_WALL_S, COST_PSEUDO_IMAGES, *COST_PASSES, COST_PEAK_MEM_MIB)
# Wall seconds times the allocation (CPUs, or the GPU fraction): only the study layer knows it.
COST_DEVICE_S = "cost_device_s"
# What a trial's cost_device_s counts: "cpu" (CPU-seconds) or "gpu" (GPU-seconds).
TAG_COST_DEVICE = "zskt.cost_device"

# ---------------------------------------------------------------- objectives of a search

# Objectives measured once, at the end of a search trial (validation MTE, and the trial's cost in
# device-seconds): further objectives of a multi-objective study (``search.objectives``), never a
# scheduler's metric, which must be reported at every evaluation.
END_OBJECTIVES = (VAL_MTE, COST_DEVICE_S)
SEARCH_OBJECTIVES = (*OBJECTIVES, *END_OBJECTIVES)  # what search.objectives may name
MINIMISED = ("kl", "loss_s", VAL_MTE, COST_DEVICE_S)  # objectives that are better when smaller
# What a search may never select on: test accuracy and test MTE come from final re-runs only.
TEST_METRICS = (TEST_ACC, MTE)

# ---------------------------------------------------------------- trial statuses and kinds

COMPLETED, PRUNED, FAILED = "completed", "pruned", "failed"
# A trial in flight when the study was interrupted (Ctrl-C); resuming the study continues it.
INTERRUPTED = "interrupted"
RUNNING = "running"

KIND_STUDY = "study"  # the parent run of a study
KIND_SEARCH, KIND_FINAL, KIND_KDAT = "search", "final", "kdat"
# A run of a designed ablation: one cell with one seed, at the full budget, measured on test.
KIND_ABLATION = "ablation"
TRIAL_KINDS = (KIND_SEARCH, KIND_ABLATION, KIND_FINAL, KIND_KDAT)

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

# ---------------------------------------------------------------- designed ablations

# Designs of an ablation: every combination of the factors' levels, or one factor at a time
# moved away from its reference level while the others stay there.
FULL_FACTORIAL = "full_factorial"
ONE_AT_A_TIME = "one_at_a_time"
DESIGNS = (FULL_FACTORIAL, ONE_AT_A_TIME)
# MLflow tags of an ablation run: the cell's stable id and its readable label. The runs table
# reads them into its ``cell`` and ``cell_label`` columns; seeds of one cell share both.
TAG_CELL = "zskt.cell"
TAG_CELL_LABEL = "zskt.cell_label"
# The study file's (and study.yaml's) section that makes a study a designed ablation.
SECTION_ABLATION = "ablation"
# The two parameters of an ablation's Optuna trials: which cell, which seed (a grid over both).
PARAM_CELL, PARAM_SEED = "cell", "seed"
# Optuna study attribute of an ablation: its cells (id, label, control, settings), in design order.
ATTR_DESIGN = "zskt_design"

# ---------------------------------------------------------------- Optuna user attributes

ATTR_TUNE_ID = "tune_trial_id"
ATTR_RUN_ID = "mlflow_run_id"
ATTR_STATUS = "zskt_status"
ATTR_REASON = "zskt_status_reason"
ATTR_CONFIG_ID = "config_id"
ATTR_FINGERPRINT = "zskt_fingerprint"  # study-level
ATTR_FINAL_CONFIGS = "final_configs"  # study-level: the configurations chosen for re-runs
# The loop iteration a trial of a multi-objective study reached (such trials hold no intermediate
# values: Optuna's trial.report is single-objective only).
ATTR_ITERATION = "zskt_iteration"

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
# A trial's temporary folders in its node's scratch folder (paths.study_scratch_dir): a
# checkpoint being handed to Tune, a local copy of the loop state being restored. A trial removes
# its own; a study run removes what a killed worker left (study/nodes.py).
SCRATCH_CHECKPOINT_PREFIX = "zskt-ckpt-"
SCRATCH_STATE_PREFIX = "zskt-state-"
SCRATCH_PREFIXES = (SCRATCH_CHECKPOINT_PREFIX, SCRATCH_STATE_PREFIX)
# Teacher file metadata: where the teacher was trained (node id and IP, host, device).
TEACHER_TRAINED_ON = "trained_on"
