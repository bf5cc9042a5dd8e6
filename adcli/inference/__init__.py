"""A trained bundle judging images: the Detector (the one inference path), cached predictions on a
prepared split, and scoring through an exported graph."""
