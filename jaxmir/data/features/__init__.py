"""Audio features re-built from omnizart: CFP (numpy and JAX), harmonic CFP and the vocal inputs."""
