"""Condor (arXiv 2501.12273): knowledge tree x task types x difficulties -> questions -> answers
-> self-critique -> refined answers -> SFT."""
