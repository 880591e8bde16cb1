"""Policy backends: one narrow `Policy.generate(prompts, params) -> list[list[str]]` interface with
local transformers, OpenAI-compatible HTTP (vLLM / SGLang / llama.cpp server) and scripted implementations.
"""
