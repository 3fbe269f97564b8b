"""The dense linear probe: the baseline every interpretable head is measured against."""
