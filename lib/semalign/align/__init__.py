"""Alignment: §4.1 layer pairing, folded semantic map, latent maps, Fig. 2 fidelity, supervisory targets."""

# Submodules, not re-exported names (as in semalign.evaluation): importing one module of the package must
# not import the others, and with them captum, matplotlib or peft, into every stage that reads it.
__all__ = ["alignment", "fidelity", "latent_maps", "pairing", "targets"]
