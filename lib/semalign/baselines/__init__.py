"""Parameter-space transfer baselines (paper Tables 1-3): SEEKING and LaTen.

Both read the teacher's weights (unlike SemAlign's student side) and write a student delta
(`semalign.baselines.delta`) that the evaluate stage adds to the student.
"""

# Submodules, not re-exported names (as in semalign.evaluation): importing one module of the package must
# not import the others, and with them captum, matplotlib or peft, into every stage that reads it.
__all__ = ["delta", "laten", "seeking"]
