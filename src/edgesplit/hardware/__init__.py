"""Hardware: the device catalog (data files) and, later, the analytical accelerator model."""
