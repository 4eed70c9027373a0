"""One strategy over documents: the document loop, the batching and out-of-memory policy, the records appended as
work finishes, and the summary rebuilt from them."""
