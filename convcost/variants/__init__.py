"""Stage 3, variants: the catalogue of cheaper conv replacements (grouped, depthwise, separable,
pointwise-grouped, shuffle, gdc), their closed forms, and substitution into layers and whole models."""
