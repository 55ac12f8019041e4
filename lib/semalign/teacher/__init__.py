"""Teacher side: residual capture, Captum layer attribution, semantic bases, the teacher cache."""

# Submodules, not re-exported names (as in semalign.evaluation): importing one module of the package must
# not import the others, and with them captum, matplotlib or peft, into every stage that reads it.
__all__ = ["activations", "attribution", "bases", "cache"]
