"""Scoring generated answers: sandboxed code execution, answer extraction, intervals and paired tests."""
