"""Towers, pooling, fusion head and checkpoints. Submodules import torch, except `user`."""
