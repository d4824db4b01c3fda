"""Width splitting: which axes of a model are width, sub-model index maps, extraction and scatter aggregation."""
