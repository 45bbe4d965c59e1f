"""Voice prompts (reusable clone prompts) and the persistent voice library."""
