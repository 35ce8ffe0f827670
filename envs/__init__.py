"""Tensor-batched environments that run many copies in one tensor op on any torch device."""
