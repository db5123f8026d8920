"""Numpy views of Arrow string arrays: buffers, 64-bit hashes, sort-based group-by."""
