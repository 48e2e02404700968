"""Deploy formats: ``ftcore export`` (the plain Llama layout for vLLM and LMDeploy, GGUF for llama.cpp and Ollama)."""
