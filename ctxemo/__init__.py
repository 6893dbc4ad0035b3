"""ctxemo: contextual negative-emotion detection in psychological-support hotline speech."""

__version__ = "0.1.0"
