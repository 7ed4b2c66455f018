# max_gpt2's Mojo kernels, built by max_gpt2.model.kernel_library() into one .mojoc.
