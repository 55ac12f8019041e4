"""Scoring generated answers: sandboxed code execution, answer extraction, intervals and paired tests."""

# Submodules, not re-exported names: the sandbox launcher imports `semalign.evaluation.sandbox` in a fresh
# interpreter and must not pay for torch.
__all__ = ["agreement", "answers", "generation", "metrics", "runner", "sandbox", "table", "variants"]
