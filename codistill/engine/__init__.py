"""The algorithm: the training loop, one group's step, Algorithm 1's schedule and loss, teachers, the outer step."""
