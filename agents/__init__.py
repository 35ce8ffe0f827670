"""Policy-gradient agents with the stable-baselines3 API and any rlopt step size."""
