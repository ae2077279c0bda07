"""Callbacks that record training dynamics on the accelerator."""
