"""Q-SENN: a sparse ternary head; `head` fits it, `quantize` makes it ternary."""
