"""zskt-ray: Zero-shot Knowledge Transfer (Micaelli & Storkey, 2019), faithful and tunable.

This package is the method layer: data, models, losses, the zero-shot loop, teachers, the KD+AT
baseline and MTE. It imports no Ray, Optuna or MLflow; ``zskt_ray.study`` sits on top of it.
"""

__version__ = "0.1.0"
