"""I-SHEEP (arXiv 2408.08072): self-instruct -> self-assessment -> threshold -> SFT, iterated."""
