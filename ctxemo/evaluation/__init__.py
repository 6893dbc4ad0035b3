"""Stage 4, evaluation: metrics, scoring a model over calls, the headline metrics of a fold and the one threshold-tuning function."""
