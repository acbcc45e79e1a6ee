"""Scoring and filtering: reward-model actor pools (PairRM, sequence-classification RMs such as
ArmoRM), LLM-judge steps on the vLLM stage, and the filters recipes keep data by."""
