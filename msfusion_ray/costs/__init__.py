"""Cost measurement: FLOPs, bytes, planned training footprint and measured memory peaks."""
