"""unetkit: from a folder of labelled images to a fast, calibrated, monitored U-Net service.

Stages, in import order (one subpackage each; a stage imports only those to its left, checked by
tests/test_layering.py; docs/design.md says why this order):
data -> models -> losses -> metrics -> artifact -> inference -> evaluation -> tuning -> monitor ->
training -> planning -> export -> registry -> serve -> active
"""

__version__ = "0.1.0"
