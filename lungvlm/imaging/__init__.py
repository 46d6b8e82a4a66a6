"""Images: the CT volume (array, spacing, LPS geometry), the one resampler, the lung mask."""
