"""unetkit: from a folder of labelled images to a fast, calibrated, monitored U-Net service.

Data flow (one subpackage per stage, imports point upstream only):
image -> data -> models -> losses -> training -> artifact -> inference -> metrics -> export -> serve -> monitor
"""

__version__ = "0.1.0"
