"""batchrun: resumable, rate-limited sweeps of generative-model jobs on the RunComfy Model API."""

__version__ = "0.1.0"
