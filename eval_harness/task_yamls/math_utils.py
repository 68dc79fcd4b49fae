"""lm-eval's own MATH answer extraction and equivalence check, for the task YAMLs in this folder."""

from lm_eval.tasks.hendrycks_math.utils import process_docs, process_results

__all__ = ["process_docs", "process_results"]
