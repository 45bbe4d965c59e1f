"""Audio decoding, resampling, validation and encoding through real codec libraries."""
