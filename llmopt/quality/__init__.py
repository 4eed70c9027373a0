"""How good the summaries are: ROUGE as Hugging Face evaluate computes it, with seeded bootstrap intervals."""
