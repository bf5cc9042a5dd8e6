"""The model layer: methods (one module each, registered by name), their networks and diffusion maths,
recipes, the shared post-processing of anomaly maps, and the product router."""
