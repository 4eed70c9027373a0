"""Experiments: a matrix of cells read from a YAML file, each cell one `llmopt run` in a process group of its own,
stopped whole at its timeout, resumed or skipped when the sweep runs again."""
