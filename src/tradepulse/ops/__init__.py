"""Operations: metrics, health, backpressure, and the real local servers (`tradepulse stack`)."""
