"""rotelab: experiments on how deep networks memorize."""

__version__ = "0.1.0"
