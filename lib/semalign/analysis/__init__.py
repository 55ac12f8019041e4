"""Analysis: linear CKA between teacher and student layers, and the self-contained report."""

# Submodules, not re-exported names (as in semalign.evaluation): importing one module of the package must
# not import the others, and with them captum, matplotlib or peft, into every stage that reads it.
__all__ = ["cka", "report"]
