"""llmopt: which way of loading and running an open LLM is fastest, how much memory it takes, and what it costs in quality.

Importing this package must stay cheap: no torch, transformers or vllm here.
"""

__version__ = "0.1.0"
