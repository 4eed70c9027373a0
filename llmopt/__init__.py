"""llmopt: which way of loading and running an open LLM is fastest, how much memory it takes, and what it costs in quality.

The flow, folder by folder: documents/ (what is summarized, and the prompts) -> strategies/ (one way of loading and
running a model behind `generate_batch`; models/ says what `--model` is) -> runner/ (the document loop: batches,
out-of-memory back-off, records, the summary) with measure/ (clocks, memory, the machine, the roofline) and quality/
(ROUGE) -> reports/ (tables and plots from result folders). sweeps/ runs many such runs, each in its own process;
serving/ load-tests served endpoints. commands/ holds the command lines; nothing else imports them.

Importing this package must stay cheap: no torch, transformers or vllm here.
"""

__version__ = "0.1.0"
