"""Published numbers of Micaelli & Storkey (2019) to put beside ours.

Source: *Zero-shot Knowledge Transfer via Adversarial Belief Matching*, NeurIPS 2019
(arXiv 1905.09768 v3). The project's description of the method, ``docs/method.md``, lists every
value used here with the table or figure it comes from (section "Published values": Table 1 on
CIFAR-10, mean +- std over 3 seeds; the SVHN row; the few-shot comparison; Table 2, MTE with
K=100, xi=1; the SVHN teacher). Accuracies are percentages.

A value is shown beside ours only where the data set and the teacher -> student pair match (and,
for KD+AT, the number of images per class M: -1 means the full training set).
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHOD_DOC = "docs/method.md"
SOURCE = f"Micaelli & Storkey, NeurIPS 2019 (arXiv 1905.09768), listed in {METHOD_DOC} (Published values)"


@dataclass(frozen=True)
class PaperRow:
    teacher_acc: float | None = None
    scratch_acc: float | None = None
    zero_shot: tuple[float, float | None] | None = None  # (mean, std)
    kdat: dict[int, tuple[float, float | None]] = field(default_factory=dict)  # M -> (mean, std)


# (dataset, teacher_arch, student_arch) -> published Table-1 values.
TABLE1: dict[tuple[str, str, str], PaperRow] = {
    ("cifar10", "wrn-16-2", "wrn-16-1"): PaperRow(
        93.97, 91.04, (82.44, 0.21), {200: (84.54, None)}
    ),
    ("cifar10", "wrn-40-1", "wrn-16-1"): PaperRow(
        93.18, 91.04, (79.93, 1.11), {200: (81.71, None)}
    ),
    ("cifar10", "wrn-40-2", "wrn-16-1"): PaperRow(
        94.73,
        91.04,
        (83.69, 0.58),
        # M = 200 from Table 1; M = 10/25/50/75/100 from the few-shot comparison (Figure 3).
        {
            200: (81.25, None),
            10: (40.32, None),
            25: (57.0, None),
            50: (68.0, None),
            75: (72.0, None),
            100: (76.0, None),
        },
    ),
    ("cifar10", "wrn-40-1", "wrn-16-2"): PaperRow(
        93.18, 93.97, (86.60, 0.56), {200: (85.74, None)}
    ),
    ("cifar10", "wrn-40-2", "wrn-16-2"): PaperRow(
        94.73, 93.97, (89.71, 0.10), {200: (86.39, None)}
    ),
    ("cifar10", "wrn-40-2", "wrn-40-1"): PaperRow(
        94.73, 93.18, (86.60, 1.79), {200: (87.35, None)}
    ),
    # SVHN: teacher accuracy from section 3; KD+AT reference is the full-data student (M = -1).
    ("svhn", "wrn-40-2", "wrn-16-1"): PaperRow(96.50, None, (94.06, 0.27), {-1: (95.88, 0.15)}),
}

# Table 2: MTE with K = 100, xi = 1. The method notes give the values per data set; the pair is
# the paper's running example (WRN-40-2 -> WRN-16-1, as in its Figures 2-4), and the KD+AT
# reference student "appears to be the full-data one" (M = -1).
MTE_K = 100
MTE_XI = 1.0
TABLE2: dict[tuple[str, str, str], dict[str, float]] = {
    ("svhn", "wrn-40-2", "wrn-16-1"): {"zero_shot": 0.09, "kdat": 0.64, "kdat_m": -1},
    ("cifar10", "wrn-40-2", "wrn-16-1"): {"zero_shot": 0.22, "kdat": 0.68, "kdat_m": -1},
}


def paper_order(dataset: str, teacher: str, student: str) -> tuple[int, str, str, str]:
    """Sort key: the paper's rows first, in its order (Table 1, then SVHN), then the others."""
    key = pair_key(dataset, teacher, student)
    order = list(TABLE1)
    return (order.index(key) if key in order else len(order), *key)


def pair_key(dataset: str, teacher: str, student: str) -> tuple[str, str, str]:
    return (str(dataset).lower(), str(teacher).lower(), str(student).lower())


def table1(dataset: str, teacher: str, student: str) -> PaperRow | None:
    return TABLE1.get(pair_key(dataset, teacher, student))


def table2(dataset: str, teacher: str, student: str) -> dict[str, float] | None:
    return TABLE2.get(pair_key(dataset, teacher, student))
