"""HTTP scoring server: request/response models and a FastAPI app around a Scorer, batching
concurrent requests together.
"""
