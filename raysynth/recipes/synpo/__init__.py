"""SynPO (arXiv 2410.06961): keyword lists -> self-prompt generator -> prompts -> answers -> response
improver -> scored pairs -> SimPO, iterated."""
