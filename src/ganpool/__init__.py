"""ganpool: a class trains one GAN together, coordinated through PostgreSQL."""

__version__ = "0.1.0"
