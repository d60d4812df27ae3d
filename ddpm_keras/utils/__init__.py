"""Utilities every layer may use: argument checks, files written safely, downloads, progress, seeds, strategies.

Nothing here imports another part of ddpm_keras.
"""
