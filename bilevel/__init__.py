"""Hypergradients and stochastic bilevel solvers with automatic step sizes on both levels."""
