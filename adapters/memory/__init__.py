"""Measurements behind the memory figures: what autograd saves, on fake or real tensors."""

from adapters.memory.saved import leaf_saved, measure_stages, saved_bytes

__all__ = ["leaf_saved", "measure_stages", "saved_bytes"]
