"""Stage 6, inference: model bundles (save, load, verify the encoder), predict over recordings or manifests, live scoring, and the per-segment / per-call outputs."""
