"""fptt-edge: LTC spiking networks trained online with FPTT, exported and run on edge devices.

Importing this package is light (no torch): the device runtime must work without it.
"""
__version__ = "0.1.0"
