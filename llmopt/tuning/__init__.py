"""`llmopt tune`: the cheapest configuration that meets a latency SLO and keeps quality, searched across loading modes,
engines and their knobs, cheapest check first (estimate, drift, speed, the paired gate); trials run as sweep cells."""
