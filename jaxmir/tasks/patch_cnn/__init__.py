"""Vocal-frame patch classification (omnizart's ``patch_cnn``): the model only, for now."""
