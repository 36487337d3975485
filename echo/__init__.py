"""Stacked recurrent networks on the echo task, trained with truncated BPTT."""
