"""How a pair becomes text: templates, excerpts, input formats, first-stage scores as text, a tokenizer."""
