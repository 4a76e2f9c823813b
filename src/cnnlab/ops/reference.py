"""Reference kernels that follow the chapter (being written; see cnnlab.ops for the contract)."""
