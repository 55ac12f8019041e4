"""Scoring generated answers: sandboxed code execution, answer extraction, intervals and paired tests."""

# Submodules, not re-exported names: the sandbox launcher imports `semalign.evaluation.sandbox` in a fresh
# interpreter and must not pay for torch.
__all__ = [
    "agreement",
    "agreement_summary",
    "answers",
    "generation",
    "metrics",
    "power",
    "prompts",
    "results",
    "runner",
    "sandbox",
    "table",
    "variants",
    "verdict",
]
