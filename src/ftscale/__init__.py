"""ftscale: finetuning scaling laws as software.

Run finetuning sweeps over base models, methods and data sizes; fit scaling laws to them; turn the
fits into decisions (which method, how much data). See README.md for a tour.
"""

__version__ = "0.1.0"
