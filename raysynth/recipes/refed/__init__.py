"""Reference-level feedback (REFED, Mehri et al. 2025): feedback written once on curated references
steers the synthesis and improvement of many new samples."""
