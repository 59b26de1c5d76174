"""Post-training quantization algorithms (white paper §3): cross-layer equalization, bias absorption,
bias correction, AdaRound and the standard pipeline that chains them."""
