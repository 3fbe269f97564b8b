"""FLINT: a learned attribute dictionary read from one or more layers.

`head` fits it; `attributes` is the attribute function, `losses` its training losses,
`relevance` the class-attribute relevance, `settings` its typed settings, and `mas` and
`am_pi` the two check metrics only FLINT models have.
"""
