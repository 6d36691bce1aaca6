"""carbond: the carbon footprint of every Slurm job, from measured node power and grid intensity."""

__version__ = "0.1.0"
