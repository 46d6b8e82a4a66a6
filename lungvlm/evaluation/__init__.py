"""Whole-chest evaluation: detection (FROC/CPM, per-nodule Dice) and whole-exam report scoring."""
