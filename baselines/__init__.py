"""Reference implementations and wrappers of other attention implementations."""
