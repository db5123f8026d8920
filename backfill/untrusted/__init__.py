"""Bytes from outside, read and shown safely: bounded JSON, server text with secrets masked."""
