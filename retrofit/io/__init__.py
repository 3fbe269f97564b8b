"""Files in and out beside the export format: atomic and bounded file helpers (`files`),
model spec strings (`specs`) and the consent they need (`trust`), shipped weights
(`weights`), and the dataset specs of the command line (`data_specs`).
"""
