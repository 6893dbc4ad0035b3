"""Stage 3, embedding: the one segment-embedding loop (length-bucketed batches), the fingerprinted embedding cache, and load_corpus (manifest + segment features) where every study starts."""
