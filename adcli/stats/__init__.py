"""Pure statistics on scores: detection metrics (anomalib's definitions) and thresholds from few normals."""
