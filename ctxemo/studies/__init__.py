"""Stage 8, studies: the commands' workflows, built from the stages below: cross-validation, ablations, training a bundle on every caller, and the demo."""
