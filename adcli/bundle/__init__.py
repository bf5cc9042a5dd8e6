"""What a run folder holds on disk and every read and write of it: the bundle inspect needs, the
training state, and the calibration."""
