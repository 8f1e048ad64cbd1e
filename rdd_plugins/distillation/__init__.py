"""Distillation: the loop, the contracts parts implement, and shared gradient-matching maths."""
