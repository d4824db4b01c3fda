"""Structured pruning: learnt unit masks (Co-S2P)."""
