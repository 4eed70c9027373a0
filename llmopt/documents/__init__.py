"""What gets summarized: documents (the study's Wikilingua sample, a JSONL file, the bundled sample), prompt-length
workloads without text, and the prompts built from them."""
