"""Everything Easel knows about a checkpoint file before it runs one."""
