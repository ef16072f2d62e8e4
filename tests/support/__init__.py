"""Test support shared by every test directory: the SmolLM2 locator and tokenizer (`smollm2`), tiny random
checkpoints, their exports and reference generations (`tiny`), and the session fixtures built from them
(`fixtures`, loaded by tests/conftest.py). `tests/` is on sys.path through pytest's `pythonpath` setting.
"""
