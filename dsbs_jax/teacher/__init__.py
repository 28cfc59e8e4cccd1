"""The teacher: few-shot chain-of-thought prompts, LLM backends and rationale extraction."""
