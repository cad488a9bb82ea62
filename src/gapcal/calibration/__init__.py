"""Calibration: the GapCalibrator and the mergeable statistics it is fitted from."""

from .calibrator import GapCalibrator
from .stats import PairStatistics

__all__ = ["GapCalibrator", "PairStatistics"]
