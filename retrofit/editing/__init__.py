"""Human editing: `apply` (the public `retrofit.edit`) re-solves a model under edits, `parse`
reads and checks the edits, `file` is the JSON edits document the browser editor exports.
"""
