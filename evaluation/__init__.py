"""Measure answer quality end to end (``hexcore eval qa``) and draw the charts of evals and benchmarks."""
