"""The command lines, one module each: parse the arguments, call the libraries, print. Nothing else in llmopt imports
them; `llmopt <command>` (main.py) and `python -m llmopt.<command>` are their two doors."""
