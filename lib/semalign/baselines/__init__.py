"""Parameter-space transfer baselines (paper Tables 1-3): SEEKING and LaTen.

Both read the teacher's weights (unlike SemAlign's student side) and write a student delta
(`semalign.baselines.delta`) that the evaluate stage adds to the student.
"""

from semalign.baselines.delta import DELTA_FILE, apply_delta, load_delta, save_delta, target_linears

__all__ = ["DELTA_FILE", "apply_delta", "load_delta", "save_delta", "target_linears"]
