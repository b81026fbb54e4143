"""hubtrain: train and ship Hugging Face models from one API."""
__version__ = "0.1.0"
