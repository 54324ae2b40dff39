"""The SOO agency backends of the driver: generation A (soo) and capsule kernels."""
