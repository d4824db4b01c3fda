"""The local training loop and evaluation, shared by every scheme."""
