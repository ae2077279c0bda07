"""Dataset readers, the labeled-subset loader and long-tail subsampling."""
