"""Evaluation suites that any causal LM can be put through: :mod:`hubtrain.evaluation.recall` (associative recall,
selective copying, induction heads, passkey retrieval)."""
